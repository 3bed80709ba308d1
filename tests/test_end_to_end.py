"""The whole path through a running `tripwire serve`: event in, signed webhook out."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.server import Tripwire, run_tripwire
from tests.support.sink import Sink

WRITE_KEY = "test-key"


def seed_config(sink_url: str) -> dict[str, Any]:
    """The seed document's own example: POST the user id and the viewed path as JSON."""
    return {
        "write_keys": [WRITE_KEY],
        "timezone": "Asia/Tokyo",
        "webhooks": {
            "allow_private_networks": True,
            "signing_secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        },
        "variables": {
            "viewed_path": {
                "event": "page",
                "field": "context.page.path",
                "stat": "latest",
                "window": "session",
            },
        },
        "campaigns": [
            {
                "id": "webhook-sample",
                "name": "Webhook sample",
                "status": "published",
                "action": {
                    "webhook": {
                        "url": sink_url + "/api?campaign=#{campaign_id}",
                        "method": "POST",
                        "headers": {"Content-Type": "application/json; charset=UTF-8"},
                        "body": {"user_id": "#{user_id}", "viewed_path": "#{viewed_path}"},
                    }
                },
            }
        ],
    }


@pytest.fixture()
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@pytest.fixture()
def tripwire(sink: Sink) -> Iterator[Tripwire]:
    with run_tripwire(seed_config(sink.url)) as server:
        yield server


def page(user_id: str, path: str) -> dict[str, Any]:
    return {
        "writeKey": WRITE_KEY,
        "userId": user_id,
        "messageId": str(uuid.uuid4()),
        "context": {"page": {"path": path, "url": f"https://shop.example{path}"}},
    }


def test_the_seed_example_fires_with_the_users_data(tripwire: Tripwire, sink: Sink) -> None:
    assert tripwire.post("/v1/page", page("user-42", "/products/7")).status_code == 200

    (request,) = sink.wait_for(1)

    assert request.method == "POST"
    assert request.path == "/api"
    assert request.params == {"campaign": ["webhook-sample"]}
    assert request.headers["content-type"] == "application/json; charset=UTF-8"
    assert request.json() == {"user_id": "user-42", "viewed_path": "/products/7"}
    assert request.headers["webhook-id"].startswith("msg_")
    assert request.headers["webhook-signature"].startswith("v1,")
    assert request.headers["user-agent"].startswith("Tripwire/")


def test_a_duplicate_event_fires_once(tripwire: Tripwire, sink: Sink) -> None:
    message = page("user-7", "/")
    assert tripwire.post("/v1/page", message).status_code == 200
    assert tripwire.post("/v1/page", message).status_code == 200
    assert tripwire.post("/v1/page", page("user-8", "/after")).status_code == 200
    first, second = sink.wait_for(2)
    assert [first.json()["user_id"], second.json()["user_id"]] == ["user-7", "user-8"]
