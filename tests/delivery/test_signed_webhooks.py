"""Every method's webhook verifies with the `standardwebhooks` package, as a receiver checks it.

A request with a body signs its body; one without (a GET, whose data is in the query string, or
a body-less POST) signs its request target, so altering the query in transit breaks it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.server import Tripwire, run_tripwire
from tests.support.sink import Received, Sink

WRITE_KEY = "test-key"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def campaign(sink_url: str, method: str, *, body: bool = True) -> dict[str, Any]:
    webhook: dict[str, Any] = {
        "url": f"{sink_url}/hooks/#{{user_id}}?campaign=#{{campaign_id}}&kind=fixed",
        "method": method,
    }
    if body:
        webhook["body"] = {"user": "#{user_id}", "plan": "#{traits.plan}", "n": 7, "ok": True}
    name = f"{method.lower()}-{'body' if body else 'bare'}"
    return {
        "id": name,
        "name": name,
        "status": "published",
        "trigger": {"event": name},
        "frequency": {"per": "event"},
        "action": {"webhook": webhook},
    }


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@pytest.fixture(scope="module")
def tripwire(sink: Sink) -> Iterator[Tripwire]:
    campaigns = [campaign(sink.url, m) for m in METHODS]
    campaigns += [campaign(sink.url, m, body=False) for m in ("POST", "DELETE")]
    config = {
        "write_keys": [WRITE_KEY],
        "webhooks": {"allow_private_networks": True, "signing_secrets": [SECRET]},
        "campaigns": campaigns,
    }
    with run_tripwire(config) as server:
        yield server


def fire(tripwire: Tripwire, sink: Sink, event: str) -> Received:
    """Send the event that triggers one campaign; return the webhook the sink received."""
    user_id = f"user {uuid.uuid4()}"  # a space: the URL carries it percent-encoded
    sent = tripwire.post(
        "/v1/batch",
        {
            "writeKey": WRITE_KEY,
            "batch": [
                {"type": "identify", "userId": user_id, "traits": {"plan": "pro & more"}},
                {"type": "track", "userId": user_id, "event": event},
            ],
        },
    )
    assert sent.status_code == 200, sent.text
    mine = f"/hooks/{user_id}"
    found = sink.wait_until(lambda received: any(r.path == mine for r in received))
    (webhook,) = [r for r in found if r.path == mine]
    return webhook


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_body_verifies_and_reads_back(tripwire: Tripwire, sink: Sink, method: str) -> None:
    received = fire(tripwire, sink, f"{method.lower()}-body")

    assert received.method == method
    payload = Webhook(SECRET).verify(received.body, received.headers)
    assert payload["plan"] == "pro & more" and payload["n"] == 7 and payload["ok"] is True


def test_a_get_signs_its_query_and_the_receiver_verifies_it(
    tripwire: Tripwire, sink: Sink
) -> None:
    received = fire(tripwire, sink, "get-body")

    assert received.method == "GET" and received.body == b""
    target = Webhook(SECRET).verify(json.dumps(received.target), received.headers)
    assert target == received.target
    assert received.params["plan"] == ["pro & more"] and received.params["ok"] == ["true"]


def test_an_altered_query_does_not_verify(tripwire: Tripwire, sink: Sink) -> None:
    received = fire(tripwire, sink, "get-body")
    altered = received.target.replace("plan=pro", "plan=free")
    assert altered != received.target

    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(json.dumps(altered), received.headers)


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_a_request_without_a_body_signs_its_target(
    tripwire: Tripwire, sink: Sink, method: str
) -> None:
    received = fire(tripwire, sink, f"{method.lower()}-bare")

    assert received.method == method and received.body == b""
    assert Webhook(SECRET).verify(json.dumps(received.target), received.headers) == (
        received.target
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(json.dumps(received.target + "&x=1"), received.headers)
