"""Page views from server libraries (page fields in `properties`) match the same `context.page`
conditions, variables and placeholders as browser page views (page fields in `context.page`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from segment.analytics.client import Client

from collector.ingest.messages import decode_batch, decode_single
from tests.support.server import run_tripwire
from tests.support.sink import Sink

WRITE_KEY = "test-key"


def node_page(path: str, **properties: Any) -> dict[str, Any]:
    """A page call as `@segment/analytics-node` sends it: the page described in `properties`."""
    return {
        "type": "page",
        "name": "Cart",
        "anonymousId": "visitor-1",
        "messageId": str(uuid.uuid4()),
        "properties": {"path": path, "title": "Your cart", **properties},
        "context": {"library": {"name": "@segment/analytics-node", "version": "2.1.2"}},
    }


def test_a_server_page_call_gets_its_page_fields_in_context_page() -> None:
    message = node_page("/cart", url="https://shop.example/cart?step=2", referrer="https://a.b/")
    event = decode_single(json.dumps(message).encode(), "page", 1.0).events[0]
    assert event.context["page"] == {
        "path": "/cart",
        "url": "https://shop.example/cart?step=2",
        "title": "Your cart",
        "referrer": "https://a.b/",
        "search": "?step=2",
    }
    assert event.context["library"]["name"] == "@segment/analytics-node"
    assert event.properties["path"] == "/cart"  # the message's own fields are kept as sent


def test_path_and_search_come_from_the_url_when_nothing_else_gives_them() -> None:
    message = {**node_page("/ignored"), "properties": {"url": "https://shop.example/cart/2?a=1"}}
    event = decode_single(json.dumps(message).encode(), "page", 1.0).events[0]
    assert event.context["page"] == {
        "url": "https://shop.example/cart/2?a=1", "path": "/cart/2", "search": "?a=1"
    }


def test_browser_page_fields_win_and_a_shared_batch_context_is_not_changed() -> None:
    browser = {
        "type": "page",
        "anonymousId": "v",
        "properties": {"path": "/from-properties"},
        "context": {"page": {"path": "/cart", "url": "https://s.example/cart"}},
    }
    shared = {"page": {"url": "https://s.example/"}}
    server = {**node_page("/cart"), "context": None}
    body = {"batch": [browser, server, {**node_page("/other"), "context": None}], "context": shared}
    events = decode_batch(json.dumps(body).encode(), 1.0).events
    assert events[0].context["page"] == {"path": "/cart", "url": "https://s.example/cart"}
    assert events[1].context["page"]["path"] == "/cart"
    assert events[2].context["page"]["path"] == "/other"
    assert events[1].context["page"]["url"] == "https://s.example/"  # from the batch context
    assert body["context"] == {"page": {"url": "https://s.example/"}}


def test_browser_and_server_page_views_fire_the_same_campaign() -> None:
    with Sink() as sink:
        config = {
            "write_keys": [WRITE_KEY],
            "webhooks": {"allow_private_networks": True},
            "variables": {
                "viewed": {"event": "page", "field": "context.page.path", "stat": "latest"}
            },
            "campaigns": [
                {
                    "id": "cart",
                    "status": "published",
                    "trigger": {"event": "page", "where": {"context": "page.path", "eq": "/cart"}},
                    "frequency": {"per": "event"},
                    "action": {
                        "webhook": {
                            "url": f"{sink.url}/cart",
                            "body": {
                                "visitor": "#{visitor_id}",
                                "path": "#{page.path}",
                                "title": "#{page.title}",
                                "viewed": "#{viewed}",
                            },
                        }
                    },
                }
            ],
        }
        with run_tripwire(config) as server:
            # analytics-python, a server library: the page is described in properties only
            client = Client(WRITE_KEY, host=server.url, sync_mode=True, max_retries=0)
            client.page(
                anonymous_id="server-visitor",
                name="Cart",
                properties={"path": "/cart", "url": "https://shop.example/cart", "title": "Cart"},
            )
            client.page(anonymous_id="server-visitor", name="Home", properties={"path": "/"})
            # a browser library: the page is in context.page
            browser = {
                "type": "page",
                "anonymousId": "browser-visitor",
                "messageId": str(uuid.uuid4()),
                "context": {"page": {"path": "/cart", "url": "https://shop.example/cart",
                                     "title": "Cart"}},
            }
            response = server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": [browser]})
            assert response.status_code == 200, response.text
            received = sink.wait_for(2)
            bodies = sorted((r.json() for r in received), key=lambda b: b["visitor"])
            assert bodies == [
                {"visitor": "browser-visitor", "path": "/cart", "title": "Cart", "viewed": "/cart"},
                {"visitor": "server-visitor", "path": "/cart", "title": "Cart", "viewed": "/cart"},
            ]
            user = server.user("server-visitor")
            assert user is not None and user["profile"]["variables"]["viewed"] == "/"
