"""Profiles an earlier version wrote to the data directory, a map of fields by name, are read;
what is written now is the array form, and the dedupe marks it kept still catch a resend."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from collector.memory.disk import Disk, read_table
from tests.support.server import Tripwire, run_tripwire

WRITE_KEY = "test-key"
MSGPACK_ARRAY = frozenset((*range(0x90, 0xA0), 0xDC, 0xDD))


def earlier_profile(key: str, ids: list[str], **fields: Any) -> bytes:
    """A profile record as versions before the array form wrote it: [state as a map, ids]."""
    return msgspec.msgpack.encode([{"key": key, **fields}, ids])


def earlier_marks(sender: str, message_ids: list[str]) -> bytes:
    """A dedupe journal entry as earlier versions wrote it: whole 16-byte digests."""
    return msgspec.msgpack.encode(
        [
            hashlib.blake2b(f"{sender}\x1f{m}".encode(), digest_size=16).digest()
            for m in message_ids
        ]
    )


async def write_earlier_data_dir(path: Path, now: float) -> None:
    disk = Disk(path)
    disk.open()
    rows = {
        "a:returning": earlier_profile(
            "a:returning",
            ["a:returning"],
            anonymous_ids=["returning"],
            traits={"plan": "pro"},
            first_seen=now - 3600,
            last_seen=now - 60,
            event_counts={"page": 2},
        ),
        "u:alice": earlier_profile(
            "u:alice",
            ["u:alice", "a:phone"],
            user_id="alice",
            anonymous_ids=["phone"],
            first_seen=now - 7200,
            last_seen=now - 120,
            event_counts={"Signed Up": 1},
        ),
    }
    table = disk.table("profiles", rows.get)
    seen = disk.journal("seen")
    disk.start()
    for key in rows:
        table.mark(key)
    seen.append(now - 30, earlier_marks("returning", ["m-before"]))
    await disk.commit()
    await disk.close()


def track(event: str, anonymous_id: str, message_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "anonymousId": anonymous_id,
        "messageId": message_id or uuid.uuid4().hex,
    }


def counts(server: Tripwire, identity: str) -> dict[str, int]:
    user = server.user(identity)
    assert user is not None
    found: dict[str, int] = user["profile"]["event_counts"]
    return found


def test_profiles_an_earlier_version_wrote_are_read_and_rewritten(tmp_path: Path) -> None:
    asyncio.run(write_earlier_data_dir(tmp_path, time.time()))
    with run_tripwire({"write_keys": [WRITE_KEY]}, data_dir=tmp_path) as server:
        returning = server.user("returning")
        assert returning is not None and returning["profile"]["traits"] == {"plan": "pro"}
        assert counts(server, "phone") == {"Signed Up": 1}  # found by its other id
        batch = [
            track("Viewed", "returning", "m-before"),  # sent before the upgrade: a duplicate
            track("Viewed", "returning"),
            track("Viewed", "phone"),
        ]
        assert server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": batch}).status_code == 200
        assert counts(server, "returning") == {"page": 2, "Viewed": 1}
        assert counts(server, "alice") == {"Signed Up": 1, "Viewed": 1}
    rows = read_table(tmp_path, "profiles")
    stored = {
        key: msgspec.msgpack.decode(row, type=tuple[msgspec.Raw, list[str]])
        for key, row in rows.items()
    }
    assert all(bytes(state)[0] in MSGPACK_ARRAY for state, _ in stored.values())  # array form
    assert stored["u:alice"][1] == ["u:alice", "a:phone"]  # all its ids, its key among them
    with run_tripwire({"write_keys": [WRITE_KEY]}, data_dir=tmp_path) as server:
        assert counts(server, "returning") == {"page": 2, "Viewed": 1}
        assert counts(server, "phone") == {"Signed Up": 1, "Viewed": 1}


def identify(user_id: str, anonymous_id: str) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": user_id,
        "anonymousId": anonymous_id,
        "messageId": uuid.uuid4().hex,
    }


def test_a_browser_that_changed_hands_is_found_as_it_was_after_a_restart(
    tmp_path: Path,
) -> None:
    # The profile first seen as anonymous "shared" becomes bob's; then carol signs in on the
    # same browser, and the anonymous id moves to her profile while bob's keeps its key.
    batch = [
        track("Viewed", "shared"),
        identify("bob", "shared"),
        identify("carol", "shared"),
        track("Bought", "shared"),
    ]

    def check(server: Tripwire) -> None:
        bob, carol, shared = server.user("bob"), server.user("carol"), server.user("shared")
        assert bob is not None and carol is not None and shared is not None
        assert bob["key"] == "a:shared" and carol["key"] == "u:carol"
        assert shared["key"] == "u:carol" and "Bought" in shared["profile"]["event_counts"]
        assert "Bought" not in bob["profile"]["event_counts"]

    with run_tripwire({"write_keys": [WRITE_KEY]}, data_dir=tmp_path) as server:
        for message in batch:  # one request each, in order
            body = {"writeKey": WRITE_KEY, "batch": [message]}
            assert server.post("/v1/batch", body).status_code == 200
        check(server)
        server.process.kill()
        server.process.wait()
    with run_tripwire({"write_keys": [WRITE_KEY]}, data_dir=tmp_path) as server:
        check(server)
