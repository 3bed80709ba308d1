"""Recent events are kept compressed, and still read whole: in the lookup and after a kill."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from collector.events import Event
from collector.memory.disk import read_table
from collector.memory.recent import COMPRESSED, TRAIN_EVENTS, RecentEvents
from tests.support.poll import wait_until
from tests.support.server import run_tripwire

WRITE_KEY = "test-key"
SHOP = "https://shop.example"


def page(visitor: str, path: str) -> dict[str, Any]:
    return {
        "type": "page",
        "messageId": uuid.uuid4().hex,
        "anonymousId": visitor,
        "properties": {"path": path},
        "context": {
            "page": {"path": path, "url": SHOP + path, "title": f"Page {path}"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0",
            "locale": "en-GB",
        },
    }


def send(server: Any, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), 100):
        body = {"writeKey": WRITE_KEY, "batch": messages[start : start + 100]}
        assert server.post("/v1/batch", body).status_code == 200


def test_recent_events_survive_a_kill_once_compressed(tmp_path: Path) -> None:
    config = {"write_keys": [WRITE_KEY], "state": {"recent_events": 5}}
    with run_tripwire(config, data_dir=tmp_path) as server:
        # enough events for the dictionary, with visitor v-0's first two among them
        send(server, [page(f"v-{n % 300}", f"/items/{n}") for n in range(TRAIN_EVENTS + 200)])
        wait_until(
            lambda: "recent" in read_table(tmp_path, "dictionaries"),
            message="the recent events' dictionary in the data directory",
        )
        send(server, [page("v-0", f"/after/{n}") for n in range(4)])
        before = server.user("v-0")
        assert before is not None
        server.process.kill()
        server.process.wait()
    paths = [m["properties"]["path"] for m in before["recent_events"]]
    assert paths[-4:] == [f"/after/{n}" for n in range(4)] and len(paths) == 5
    assert before["recent_events"][-1]["context"]["userAgent"].endswith("Firefox/126.0")
    with run_tripwire(config, data_dir=tmp_path) as server:
        after = server.user("v-0")
        assert after is not None and after["recent_events"] == before["recent_events"]


def event(n: int, visitor: str = "v") -> Event:
    return Event(
        type="track", name="Viewed", message_id=f"m-{n}", anonymous_id=visitor,
        properties={"n": n, "sku": f"sku-{n % 7}"},
        context={"page": {"path": f"/p/{n}", "url": f"{SHOP}/p/{n}"}},
        timestamp=1_700_000_000.0 + n, received_at=1_700_000_000.0 + n,
    )


def test_events_kept_before_the_dictionary_are_compressed_once_it_exists(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recent = RecentEvents(lambda: 3, lambda: 4096)
    first = recent.add("a:early", event(0, "early"))
    assert first[0] != COMPRESSED  # no dictionary yet
    with caplog.at_level(logging.INFO, logger="tripwire.store"):
        for n in range(1, TRAIN_EVENTS + 1):  # no event loop here: it is trained in place
            recent.add(f"a:{n % 50}", event(n, str(n % 50)))
            # the log says when compression starts (at the TRAIN_EVENTS-th event, the early
            # one included), not before
            assert ("compressed from now on" in caplog.text) == (n >= TRAIN_EVENTS - 1)
    assert caplog.text.count("compressed from now on") == 1
    assert recent.codec.dictionary is not None
    assert all(item[0] == COMPRESSED for item in recent.items("a:early"))
    assert [e.message_id for e in recent.events("a:early")] == ["m-0"]
    assert [e.properties["n"] for e in recent.events("a:0")] == [900, 950, 1000]  # the newest 3
    # a restart: the items as stored, the dictionary first
    again = RecentEvents(lambda: 3, lambda: 4096)
    again.codec.set_dictionary(recent.codec.dictionary)
    again.load([("a:0", recent.items("a:0")), ("a:early", [first])])
    assert again.compress_held() == {"a:early"}  # the one written uncompressed
    assert again.events("a:0") == recent.events("a:0")
    assert again.events("a:early") == recent.events("a:early")
    # without its dictionary a compressed event cannot be read: dropped, not a failed start
    lost = RecentEvents(lambda: 3, lambda: 4096)
    lost.load([("a:0", recent.items("a:0"))])
    assert lost.events("a:0") == []
