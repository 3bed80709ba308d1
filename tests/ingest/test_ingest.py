"""The Segment-compatible ingest API, end to end against a running `tripwire serve`."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from segment.analytics.client import Client
from segment.analytics.request import APIError

from tests.support.poll import wait_until
from tests.support.server import Tripwire, run_tripwire

WRITE_KEY = "test-key"


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    with run_tripwire({"write_keys": [WRITE_KEY], "allowed_origins": ["*"]}) as server:
        yield server


def track(anonymous_id: str, event: str = "Clicked", **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "anonymousId": anonymous_id,
        "messageId": str(uuid.uuid4()),
        "properties": {"n": 1},
        **extra,
    }


def batch(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"writeKey": WRITE_KEY, "batch": list(messages)}


def accepted(server: Tripwire) -> float:
    return server.metric("tripwire_ingest_messages_total", result="accepted")


def event_names(server: Tripwire, identity: str) -> list[str]:
    user = server.user(identity)
    return [e.get("event") or e["type"] for e in user["recent_events"]] if user else []


def test_segment_library_calls_build_one_merged_profile(tripwire: Tripwire) -> None:
    anonymous_id = f"anon-{uuid.uuid4()}"
    user_id = f"user-{uuid.uuid4()}"
    client = Client(WRITE_KEY, host=tripwire.url, sync_mode=True, max_retries=0)
    client.page(
        anonymous_id=anonymous_id,
        name="Home",
        properties={"path": "/"},
        context={"page": {"path": "/", "url": "http://shop.test/"}},
    )
    client.track(anonymous_id=anonymous_id, event="Added To Cart", properties={"sku": "A1"})
    client.identify(
        user_id=user_id, anonymous_id=anonymous_id, traits={"plan": "pro", "email": "a@b.test"}
    )
    client.alias(previous_id=anonymous_id, user_id=user_id)
    client.track(user_id=user_id, event="Order Completed", properties={"revenue": 42})
    client.flush()

    by_user = wait_until(
        lambda: len(event_names(tripwire, user_id)) == 5 and tripwire.user(user_id)
    )
    by_anonymous = tripwire.user(anonymous_id)
    assert by_anonymous is not None and by_anonymous["key"] == by_user["key"]
    assert event_names(tripwire, user_id) == [
        "page",
        "Added To Cart",
        "identify",
        "alias",
        "Order Completed",
    ]
    profile = by_user["profile"]
    assert profile["traits"]["plan"] == "pro"
    assert profile["user_id"] == user_id
    assert anonymous_id in profile["anonymous_ids"]


def test_anonymous_history_joins_the_user_on_identify(tripwire: Tripwire) -> None:
    anonymous_id, user_id = f"a-{uuid.uuid4()}", f"u-{uuid.uuid4()}"
    assert (
        tripwire.post("/v1/batch", batch(track(anonymous_id), track(anonymous_id))).status_code
        == 200
    )
    assert tripwire.post("/v1/batch", batch(track("other", userId=user_id))).status_code == 200
    identify = {
        "type": "identify",
        "anonymousId": anonymous_id,
        "userId": user_id,
        "traits": {"name": "Ann"},
        "messageId": str(uuid.uuid4()),
    }
    assert tripwire.post("/v1/identify", {**identify, "writeKey": WRITE_KEY}).status_code == 200
    user = tripwire.user(user_id)
    assert user is not None
    assert len(user["recent_events"]) == 4
    assert user["profile"]["traits"]["name"] == "Ann"
    assert tripwire.user(anonymous_id)["key"] == user["key"]


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        value = {"n": value}
    return value


_JSON = {"Content-Type": "application/json"}


def _raw_batch(properties: bytes) -> bytes:
    """A batch whose one message's properties are written as raw JSON bytes."""
    return (
        b'{"writeKey":"test-key","batch":[{"type":"track","event":"E","anonymousId":"x",'
        b'"properties":{"p":' + properties + b"}}]}"
    )


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("not json", {"content": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "$"),
    ("wrong type", {"json": batch(track("x", properties="flat"))}, 400, "$.batch[0].properties"),
    (
        "missing ids",
        {"json": batch({"type": "track", "event": "E", "messageId": "m"})},
        400,
        "$.batch[0].anonymousId",
    ),
    (
        "missing event",
        {"json": batch({"type": "track", "anonymousId": "x"})},
        400,
        "$.batch[0].event",
    ),
    (
        "unknown type",
        {"json": batch({"type": "teleport", "anonymousId": "x"})},
        400,
        "$.batch[0].type",
    ),
    (
        "message over 32 KB",
        {"json": batch(track("x", properties={"blob": "x" * 33_000}))},
        413,
        "$.batch[0]",
    ),
    (
        "batch over 500 KB",
        {"json": batch(*[track("x", properties={"b": "x" * 20_000}) for _ in range(30)])},
        413,
        "$",
    ),
    (
        "batch over 2,500 messages",
        {"json": batch(*[{"type": "page", "anonymousId": "x"}] * 2501)},
        413,
        "$.batch",
    ),
    (
        "nesting deeper than 16",
        {"json": batch(track("x", properties=_deep(20)))},
        400,
        "$.batch[0]",
    ),
    (
        "nesting 1,000 levels deep in a message",
        {"content": _raw_batch(b'[' * 1000 + b']' * 1000), "headers": _JSON},
        400,
        "$",
    ),
    (
        "nesting 1,000 levels deep in the batch's context",
        {
            "content": b'{"writeKey":"test-key","context":{"a":' + b"[" * 1000 + b"]" * 1000
            + b'},"batch":[{"type":"page","anonymousId":"x"}]}',
            "headers": _JSON,
        },
        400,
        "$",
    ),
    (
        "nesting 5,000 levels deep in a single message",
        {
            "content": b'{"writeKey":"test-key","anonymousId":"x","z":'
            + b"[" * 5000 + b"]" * 5000 + b"}",
            "headers": _JSON,
            "url": "/v1/page",
        },
        400,
        "$",
    ),
    (
        "timestamp near the largest float",
        {"json": batch(track("x", timestamp=1.7e308))},
        400,
        "$.batch[0].timestamp",
    ),
    (
        "sentAt near the smallest float",
        {"json": batch(track("x", timestamp="2026-01-01T00:00:00Z", sentAt=-1.7e308))},
        400,
        "$.batch[0].sentAt",
    ),
    (
        "skew correction out of range",
        {"json": batch(track("x", timestamp=1, sentAt=30_000_000_000))},
        400,
        "$.batch[0].sentAt",
    ),
    (
        "batch sentAt out of range",
        {"json": {**batch(track("x")), "sentAt": "0001-01-01T00:00:00Z"}},
        400,
        "$.sentAt",
    ),
    (
        "integer of 310 digits",
        {"json": batch(track("x", properties={"price": 10**309}))},
        400,
        "$.batch[0].properties.price",
    ),
    (
        "integer past 64 bits in traits",
        {"json": batch({"type": "identify", "anonymousId": "x", "traits": {"n": [1, 2**64]}})},
        400,
        "$.batch[0].traits.n[1]",
    ),
    (
        "float past the largest",
        {"content": _raw_batch(b"1e400"), "headers": _JSON},
        400,
        "$.batch[0].properties",
    ),
    (
        "anonymousId of 30 KB",
        {"json": batch(track("x" * 30_000))},
        400,
        "$.batch[0].anonymousId",
    ),
    (
        "broken gzip",
        {
            "content": b"\x1f\x8b\x08\x00garbage",
            "headers": {"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        },
        400,
        "$",
    ),
    (
        "unknown write key",
        {"json": {"writeKey": "wrong", "batch": [track("x")]}},
        401,
        "$.writeKey",
    ),
    ("missing write key", {"json": {"batch": [track("x")]}}, 401, "$.writeKey"),
    (
        "unsupported content type",
        {"content": b"a=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        415,
        "content-type",
    ),
]


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "path"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_input_gets_a_4xx_with_a_path_and_good_requests_still_count(
    tripwire: Tripwire, case: str, request_kwargs: dict[str, Any], status: int, path: str
) -> None:
    anonymous_id = f"a-{uuid.uuid4()}"
    assert tripwire.post("/v1/batch", batch(track(anonymous_id, "Before"))).status_code == 200

    kwargs = dict(request_kwargs)
    response = tripwire.client.post(kwargs.pop("url", "/v1/batch"), **kwargs)

    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] and body["detail"].startswith(path), body
    assert tripwire.post("/v1/batch", batch(track(anonymous_id, "After"))).status_code == 200
    assert event_names(tripwire, anonymous_id) == ["Before", "After"]


def test_a_batch_keeps_its_good_messages_and_lists_the_rejected(tripwire: Tripwire) -> None:
    anonymous_id = f"a-{uuid.uuid4()}"
    messages = [
        track(anonymous_id, "One"),
        {"type": "track", "anonymousId": anonymous_id},
        track(anonymous_id, "Three"),
    ]
    response = tripwire.post("/v1/batch", batch(*messages))
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "rejected": [{"index": 1, "detail": "$.batch[1].event: required for track"}],
    }
    assert event_names(tripwire, anonymous_id) == ["One", "Three"]


def test_the_same_batch_sent_twice_counts_once(tripwire: Tripwire) -> None:
    anonymous_id = f"a-{uuid.uuid4()}"
    payload = batch(track(anonymous_id, "Once"), track(anonymous_id, "Twice"))
    before = accepted(tripwire)
    assert tripwire.post("/v1/batch", payload).status_code == 200
    assert tripwire.post("/v1/batch", payload).status_code == 200
    assert event_names(tripwire, anonymous_id) == ["Once", "Twice"]
    assert accepted(tripwire) - before == 2


def test_gzip_text_plain_and_basic_auth_are_accepted(tripwire: Tripwire) -> None:
    anonymous_id = f"a-{uuid.uuid4()}"
    body = gzip.compress(json.dumps({"batch": [track(anonymous_id, "Zipped")]}).encode())
    credentials = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    response = tripwire.client.post(
        "/v1/batch",
        content=body,
        headers={
            "Content-Type": "text/plain",
            "Content-Encoding": "gzip",
            "Authorization": f"Basic {credentials}",
        },
    )
    assert response.status_code == 200, response.text
    single = {**track(anonymous_id, "Single"), "writeKey": WRITE_KEY}
    del single["type"]
    assert tripwire.post("/v1/track", single).status_code == 200
    assert event_names(tripwire, anonymous_id) == ["Zipped", "Single"]


def test_a_gzip_body_of_several_members_is_read_whole(tripwire: Tripwire) -> None:
    anonymous_id = f"a-{uuid.uuid4()}"
    text = json.dumps({"writeKey": WRITE_KEY, "batch": [track(anonymous_id, "Two Members")]})
    middle = len(text) // 2
    body = gzip.compress(text[:middle].encode()) + gzip.compress(text[middle:].encode())
    response = tripwire.client.post(
        "/v1/batch", content=body, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    assert event_names(tripwire, anonymous_id) == ["Two Members"]


def test_client_clock_skew_is_corrected(tripwire: Tripwire) -> None:
    anonymous_id = f"a-{uuid.uuid4()}"
    skewed_now = datetime.now(UTC) + timedelta(hours=3)  # the client's clock runs 3 h fast
    message = track(
        anonymous_id,
        timestamp=(skewed_now - timedelta(seconds=10)).isoformat(),
        sentAt=skewed_now.isoformat(),
    )
    assert tripwire.post("/v1/batch", batch(message)).status_code == 200
    event = tripwire.user(anonymous_id)["recent_events"][0]
    assert abs(event["receivedAt"] - 10 - event["timestamp"]) < 1.0


def test_browsers_get_cors_answers(tripwire: Tripwire) -> None:
    preflight = tripwire.client.options(
        "/v1/batch", headers={"Origin": "http://shop.test", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    response = tripwire.client.post(
        "/v1/batch", json=batch(track("x")), headers={"Origin": "http://shop.test"}
    )
    assert response.headers["access-control-allow-origin"] == "*"


def test_only_configured_origins_are_allowed() -> None:
    with run_tripwire(
        {"write_keys": [WRITE_KEY], "allowed_origins": ["http://shop.test"]}
    ) as server:
        allowed = server.client.post(
            "/v1/batch", json=batch(track("x")), headers={"Origin": "http://shop.test"}
        )
        assert allowed.headers["access-control-allow-origin"] == "http://shop.test"
        other = server.client.post(
            "/v1/batch", json=batch(track("x")), headers={"Origin": "http://evil.test"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_health_readiness_and_metrics(tripwire: Tripwire) -> None:
    assert tripwire.client.get("/healthz").json()["status"] == "ok"
    assert tripwire.client.get("/readyz").status_code == 200
    assert "tripwire_ingest_requests_total" in tripwire.metrics()


def test_state_survives_a_restart(tmp_path: Any) -> None:
    config = {"write_keys": [WRITE_KEY]}
    with run_tripwire(config, data_dir=tmp_path) as server:
        assert server.post("/v1/batch", batch(track("keeper", "Saved"))).status_code == 200
    with run_tripwire(config, data_dir=tmp_path) as server:
        assert event_names(server, "keeper") == ["Saved"]
        again = server.post("/v1/batch", batch(track("keeper", "Saved")))
        assert again.status_code == 200


def test_unknown_endpoint_and_method(tripwire: Tripwire) -> None:
    assert tripwire.client.post("/v1/teleport", json={}).status_code == 404
    assert tripwire.client.get("/v1/batch").status_code == 405
    with httpx.Client(base_url=tripwire.url, trust_env=False) as client:
        assert client.post("/v1/batch", content=b"").status_code == 400


def test_segment_library_shows_why_a_request_was_refused(tripwire: Tripwire) -> None:
    client = Client("not-a-key", host=tripwire.url, sync_mode=True, max_retries=0)

    with pytest.raises(APIError) as refused:
        client.track(anonymous_id=f"a-{uuid.uuid4()}", event="Clicked")

    assert refused.value.status == 401
    assert refused.value.code == "unauthorized"
    assert refused.value.message == "$.writeKey: unknown write key"


def test_error_answers_keep_their_own_names_beside_the_libraries(tripwire: Tripwire) -> None:
    response = tripwire.client.post(
        "/v1/batch", json={"writeKey": WRITE_KEY, "batch": [{"type": "track"}]}
    )

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == body["error"] == "bad_request"
    assert body["message"] == body["detail"] and body["detail"].startswith("$.batch[0]")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/t", {"type": "track", "event": "Short Track"}),
        ("/v1/p", {"type": "page", "name": "Short Page"}),
        ("/v1/i", {"type": "identify", "traits": {"plan": "pro"}}),
        ("/v1/g", {"type": "group", "groupId": "g-1"}),
        ("/v1/s", {"type": "screen", "name": "Short Screen"}),
        ("/v1/a", {"type": "alias", "previousId": "earlier-id"}),
    ],
)
def test_analytics_js_short_paths_are_served(
    tripwire: Tripwire, path: str, message: dict[str, Any]
) -> None:
    anonymous_id = f"a-{uuid.uuid4()}"
    body = {**message, "anonymousId": anonymous_id, "messageId": str(uuid.uuid4()),
            "writeKey": WRITE_KEY}

    response = tripwire.client.post(
        path, content=json.dumps(body), headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 200, response.text
    assert wait_until(lambda: event_names(tripwire, anonymous_id)) == [
        message.get("event") or message["type"]
    ]


def test_analytics_js_short_batch_path_is_served(tripwire: Tripwire) -> None:
    anonymous_id = f"a-{uuid.uuid4()}"

    response = tripwire.client.post(
        "/v1/b",
        content=json.dumps(batch(track(anonymous_id, "One"), track(anonymous_id, "Two"))),
        headers={"Content-Type": "text/plain"},
    )

    assert response.status_code == 200, response.text
    assert wait_until(lambda: event_names(tripwire, anonymous_id)) == ["One", "Two"]


def test_rudderstack_beacon_path_takes_the_write_key_from_the_query(tripwire: Tripwire) -> None:
    anonymous_id = f"a-{uuid.uuid4()}"
    body = {"batch": [track(anonymous_id, "Beaconed")], "sentAt": datetime.now(UTC).isoformat()}

    response = tripwire.client.post(
        f"/beacon/v1/batch?writeKey={WRITE_KEY}",
        content=json.dumps(body),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    refused = tripwire.client.post(
        "/beacon/v1/batch?writeKey=wrong", content=json.dumps(body),
        headers={"Content-Type": "text/plain"},
    )

    assert response.status_code == 200, response.text
    assert wait_until(lambda: event_names(tripwire, anonymous_id)) == ["Beaconed"]
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"


def test_unknown_ingest_paths_still_answer_404(tripwire: Tripwire) -> None:
    response = tripwire.client.post("/v1/x", json=batch(track("someone")))

    assert response.status_code == 404
    assert response.json()["message"] == "/v1/x: no such endpoint"
