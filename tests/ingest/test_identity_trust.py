"""Who a user is, against a real `tripwire serve` in both store modes: an alias never merges two
known users, and with identity verification on, a user id sent with the public write key
counts only when the site signed it (`context.userHash`); server write keys are believed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from collector.ingest.verification import user_hash
from tests.support.redis import RedisServer
from tests.support.server import Tripwire, run_tripwire
from tests.support.sink import Sink

PUBLIC = "public-key"
SERVER = "server-key"
SECRET = "identity-secret-for-tests-0123456789"


def config(sink: Sink, **identity: Any) -> dict[str, Any]:
    return {
        "write_keys": [PUBLIC],
        "webhooks": {"allow_private_networks": True},
        "identity": identity,
        "campaigns": [{
            "id": "order",
            "status": "published",
            "trigger": {"event": "Order Completed"},
            "frequency": {"per": "event"},
            "action": {"webhook": {
                "url": f"{sink.url}/order",
                "body": {"user": "#{user_id}", "email": "#{traits.email|none}"},
            }},
        }],
    }


@pytest.fixture(params=["memory", "redis"])
def store_args(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "memory":
        return []
    redis: RedisServer = request.getfixturevalue("redis_server")
    return ["--store", redis.url]


@contextmanager
def collector(store_args: list[str], **identity: Any) -> Iterator[tuple[Tripwire, Sink]]:
    with Sink() as sink, run_tripwire(config(sink, **identity), args=store_args) as server:
        yield server, sink


def message(type_: str, anonymous_id: str, key: str = PUBLIC, **fields: Any) -> dict[str, Any]:
    return {"writeKey": key, "batch": [
        {"type": type_, "anonymousId": anonymous_id, "messageId": uuid.uuid4().hex, **fields}
    ]}


def order_emails(sink: Sink, count: int) -> list[tuple[str, str]]:
    return [(r.json()["user"], r.json()["email"]) for r in sink.wait_for(count)]


def test_an_alias_never_takes_over_a_known_user(store_args: list[str]) -> None:
    with collector(store_args) as (server, sink):
        victim = {"userId": "victim", "traits": {"email": "victim@example.com"}}
        assert server.post("/v1/batch", message("identify", "v-browser", **victim)).is_success
        attacker = {"userId": "attacker", "traits": {"email": "attacker@example.com"}}
        assert server.post("/v1/batch", message("identify", "a-browser", **attacker)).is_success
        takeover = message("alias", "a-browser", userId="attacker", previousId="victim")
        server.post("/v1/batch", takeover)
        order = {"event": "Order Completed"}
        server.post("/v1/batch", message("track", "v-browser", userId="victim", **order))
        assert order_emails(sink, 1) == [("victim", "victim@example.com")]
        server.post("/v1/batch", message("track", "a-browser", userId="attacker", **order))
        assert order_emails(sink, 2)[1] == ("attacker", "attacker@example.com")
        found = server.user("victim")
        assert found is not None and found["profile"]["user_id"] == "victim"


def test_unsigned_user_ids_are_refused_when_verification_is_on(store_args: list[str]) -> None:
    with collector(store_args, secrets=[SECRET], server_write_keys=[SERVER]) as (server, sink):
        claim = {"userId": "victim", "traits": {"email": "attacker@example.com"}}
        unsigned = server.post("/v1/batch", message("identify", "a-browser", **claim))
        assert unsigned.status_code == 400 and "userHash" in unsigned.json()["detail"]
        forged = message("identify", "a-browser", context={"userHash": "0" * 64}, **claim)
        assert server.post("/v1/batch", forged).status_code == 400
        alias = message("alias", "a-browser", previousId="victim", userId="attacker",
                        context={"userHash": user_hash(SECRET, "attacker")})
        assert server.post("/v1/batch", alias).status_code == 400
        assert server.user("victim") is None  # nothing was kept of the claims
        # the site signs its member: accepted, and the signature is not kept
        signed = message("identify", "v-browser", userId="victim",
                         traits={"email": "victim@example.com"},
                         context={"userHash": user_hash(SECRET, "victim")})
        assert server.post("/v1/batch", signed).status_code == 200
        found = server.user("victim")
        assert found is not None and "userHash" not in str(found)
        # a server key is believed as sent; anonymous events need nothing
        order = {"event": "Order Completed"}
        server.post("/v1/batch", message("track", "v-browser", SERVER, userId="victim", **order))
        assert order_emails(sink, 1) == [("victim", "victim@example.com")]
        assert server.post("/v1/batch", message("page", "someone")).status_code == 200
