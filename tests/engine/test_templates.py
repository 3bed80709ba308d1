"""Webhook templates: placeholders in URL, headers and body, types, fallbacks, built-ins, the
missing-value and CR/LF rules, and load-time errors for unknown names with their paths."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from collector.config.settings import decode_config
from collector.engine.engine import Engine, Outcome, compile_rules
from collector.engine.profile import UserState, session_id
from collector.errors import ConfigError
from collector.events import Event
from collector.webhook import WebhookRequest

T = datetime(2026, 3, 10, 12, 0, 0, 250000, tzinfo=UTC).timestamp()
VARIABLES = {
    "spent": {"event": "Order", "field": "properties.revenue", "stat": "sum", "default": 0},
    "last_sku": {"event": "Order", "field": "properties.sku", "stat": "latest"},
}


def engine_with(webhook: dict[str, Any], **campaign: Any) -> Engine:
    spec = {
        "id": "c1",
        "name": "Follow-up",
        "status": "published",
        "trigger": {"event": "Clicked"},
        "action": {"webhook": webhook},
        **campaign,
    }
    return Engine(compile_rules(decode_config({"variables": VARIABLES, "campaigns": [spec]})))


def click(
    engine: Engine, state: UserState | None = None, *, user_id: str | None = "u-1", **fields: Any
) -> Outcome:
    event = Event(
        type="track",
        name="Clicked",
        message_id="msg-1",
        anonymous_id="anon-1",
        user_id=user_id,
        timestamp=T,
        received_at=T,
        **fields,
    )
    return engine.process(state, event, T)


def fired(outcome: Outcome) -> WebhookRequest:
    assert [d.reason for d in outcome.decisions] == [None]
    (webhook,) = outcome.webhooks
    return webhook


def test_url_values_are_url_encoded() -> None:
    engine = engine_with(
        {"url": "https://hooks.example/p/#{properties.q}?u=#{user_id}&c=#{campaign_id}"}
    )
    webhook = fired(click(engine, properties={"q": "a b&c/d"}, user_id="ü@x"))
    assert webhook.url == "https://hooks.example/p/a%20b%26c%2Fd?u=%C3%BC%40x&c=c1"


@pytest.mark.parametrize(
    ("value", "path"),
    [("..", "/users/%2E%2E/notify"), (".", "/users/%2E/notify"), ("...", "/users/.../notify")],
)
def test_a_value_of_dots_cannot_move_the_url_path(value: str, path: str) -> None:
    engine = engine_with({"url": "https://hooks.example/users/#{properties.who}/notify"})
    webhook = fired(click(engine, properties={"who": value}))
    assert webhook.url == "https://hooks.example" + path
    # what delivery sends as the request target
    assert httpx.URL(webhook.url).raw_path.decode() == path


def test_headers_render_and_crlf_suppresses() -> None:
    engine = engine_with(
        {"url": "https://hooks.example/", "headers": {"X-User": "id=#{user_id}", "X-Fixed": "abc"}}
    )
    assert fired(click(engine)).headers == {"X-User": "id=u-1", "X-Fixed": "abc"}
    outcome = click(engine, user_id="u-1\r\nX-Evil: 1")
    assert outcome.webhooks == []
    assert [(d.outcome, d.reason) for d in outcome.decisions] == [("suppressed", "invalid_header")]


def test_a_whole_placeholder_keeps_the_json_type_and_text_is_interpolated() -> None:
    engine = engine_with(
        {
            "url": "https://hooks.example/",
            "body": {
                "amount": "#{properties.amount}",
                "flag": "#{properties.flag}",
                "items": "#{properties.items}",
                "nested": {"list": ["#{properties.amount}", "x#{properties.amount}"]},
                "sentence": "#{properties.flag} and #{properties.items} cost #{properties.amount}",
                "constant": 7,
            },
        }
    )
    body = fired(click(engine, properties={"amount": 12.5, "flag": True, "items": [1, "a"]})).body
    assert body == {
        "amount": 12.5,
        "flag": True,
        "items": [1, "a"],
        "nested": {"list": [12.5, "x12.5"]},
        "sentence": 'true and [1,"a"] cost 12.5',
        "constant": 7,
    }


def test_fallbacks_and_variable_defaults() -> None:
    engine = engine_with(
        {
            "url": "https://hooks.example/?plan=#{traits.plan|free}",
            "body": {
                "spent": "#{spent}",
                "sku": "#{last_sku|none}",
                "count": "#{properties.count|0}",
                "ok": "#{properties.ok|true}",
                "label": "plan: #{traits.plan|unknown}",
            },
        }
    )
    webhook = fired(click(engine))
    assert webhook.url == "https://hooks.example/?plan=free"
    assert webhook.body == {
        "spent": 0,
        "sku": "none",
        "count": 0,
        "ok": True,
        "label": "plan: unknown",
    }


def test_a_missing_value_without_fallback_or_default_suppresses() -> None:
    engine = engine_with({"url": "https://hooks.example/", "body": {"sku": "#{last_sku}"}})
    outcome = click(engine)
    assert outcome.webhooks == []
    assert outcome.decisions[0].reason == "missing_variable"
    # an anonymous visitor has no user_id
    anonymous = engine_with({"url": "https://hooks.example/", "body": {"user": "#{user_id}"}})
    assert click(anonymous, user_id=None).decisions[0].reason == "missing_variable"
    # null counts as missing
    nulls = engine_with({"url": "https://hooks.example/", "body": {"v": "#{properties.v}"}})
    assert click(nulls, properties={"v": None}).decisions[0].reason == "missing_variable"


def test_user_variables_render_their_current_value() -> None:
    engine = engine_with(
        {"url": "https://hooks.example/", "body": {"spent": "#{spent}", "sku": "#{last_sku}"}}
    )
    order = Event(
        type="track",
        name="Order",
        message_id="o1",
        anonymous_id="anon-1",
        properties={"revenue": 30, "sku": "A-1"},
        timestamp=T - 60,
        received_at=T - 60,
    )
    state = engine.process(None, order, T - 60).state
    assert fired(click(engine, state)).body == {"spent": 30, "sku": "A-1"}


def test_builtins() -> None:
    names = [
        "user_id",
        "visitor_id",
        "campaign_id",
        "campaign_name",
        "variant_id",
        "event",
        "event_id",
        "delivery_id",
        "timestamp",
        "session_id",
    ]
    engine = engine_with({"url": "https://hooks.example/", "body": {n: f"#{{{n}}}" for n in names}})
    outcome = click(engine)
    webhook = fired(outcome)
    assert outcome.state.session is not None
    assert webhook.body == {
        "user_id": "u-1",
        "visitor_id": "anon-1",
        "campaign_id": "c1",
        "campaign_name": "Follow-up",
        "variant_id": "",
        "event": "Clicked",
        "event_id": "msg-1",
        "delivery_id": webhook.webhook_id,
        "timestamp": "2026-03-10T12:00:00.250Z",
        "session_id": session_id(outcome.state.key, outcome.state.session),
    }


def test_variant_id_renders_for_variants() -> None:
    action = {"webhook": {"url": "https://hooks.example/#{variant_id}"}}
    engine = engine_with(
        {"url": "unused"}, action=None, variants=[{"id": "B", "rate": 100, "action": action}]
    )
    webhook = fired(click(engine))
    assert (webhook.url, webhook.variant_id) == ("https://hooks.example/B", "B")


def test_prefixed_names_and_page_fields() -> None:
    engine = engine_with(
        {
            "url": "https://hooks.example/",
            "body": {
                "plan": "#{traits.plan}",
                "city": "#{traits.address.city}",
                "sku": "#{properties.items.0.sku}",
                "locale": "#{context.locale}",
                "path": "#{page.path}",
                "title": "#{page.title|-}",
            },
        }
    )
    webhook = fired(
        click(
            engine,
            traits={"plan": "pro", "address": {"city": "Osaka"}},
            properties={"items": [{"sku": "A-1"}]},
            context={"locale": "ja-JP", "page": {"path": "/cart", "title": "Cart"}},
        )
    )
    assert webhook.body == {
        "plan": "pro",
        "city": "Osaka",
        "sku": "A-1",
        "locale": "ja-JP",
        "path": "/cart",
        "title": "Cart",
    }


def test_page_fields_fall_back_to_the_latest_page_viewed() -> None:
    engine = engine_with({"url": "https://hooks.example/", "body": {"path": "#{page.path}"}})
    view = Event(
        type="page",
        name="page",
        message_id="p1",
        anonymous_id="anon-1",
        context={"page": {"path": "/product/9", "url": "https://shop.example/product/9"}},
        timestamp=T - 5,
        received_at=T - 5,
    )
    state = engine.process(None, view, T - 5).state
    assert fired(click(engine, state)).body == {"path": "/product/9"}


@pytest.mark.parametrize(
    ("webhook", "problem"),
    [
        (
            {"url": "https://x.example/", "body": {"user": "#{usr_id}"}},
            "campaigns[0].action.webhook.body.user: unknown variable 'usr_id'",
        ),
        (
            {"url": "https://x.example/#{nope}"},
            "campaigns[0].action.webhook.url: unknown variable 'nope'",
        ),
        (
            {"url": "https://x.example/", "headers": {"X-A": "#{page.colour}"}},
            "campaigns[0].action.webhook.headers.X-A: unknown variable 'page.colour'",
        ),
        (
            {"url": "https://x.example/", "body": {"a": [1, {"b": "x #{ }"}]}},
            "campaigns[0].action.webhook.body.a[1].b: empty placeholder '#{}'",
        ),
        (
            {"url": "https://x.example/", "headers": {"X-A": "a\nb"}},
            "campaigns[0].action.webhook.headers.X-A: header names and values cannot hold CR or LF",
        ),
    ],
)
def test_unknown_names_are_load_errors_with_paths(webhook: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        engine_with(webhook)
    assert caught.value.problems == [problem]


def test_every_template_problem_is_reported_including_variants() -> None:
    bad = {"webhook": {"url": "https://x.example/#{a}", "body": {"b": "#{b}"}}}
    with pytest.raises(ConfigError) as caught:
        engine_with(
            {"url": "unused"},
            action=None,
            variants=[
                {"id": "A", "rate": 50, "action": {"webhook": {"url": "https://x.example/"}}},
                {"id": "B", "rate": 50, "action": bad},
            ],
        )
    assert caught.value.problems == [
        "campaigns[0].variants[1].action.webhook.url: unknown variable 'a'",
        "campaigns[0].variants[1].action.webhook.body.b: unknown variable 'b'",
    ]


def test_literal_braces_stay_as_written() -> None:
    engine = engine_with(
        {"url": "https://hooks.example/{x}/#{user_id}", "headers": {"X-A": "{#{user_id}}"}}
    )
    webhook = fired(click(engine))
    assert (webhook.url, webhook.headers) == ("https://hooks.example/{x}/u-1", {"X-A": "{u-1}"})


def test_whole_traits_and_properties_go_as_json_objects() -> None:
    engine = engine_with(
        {
            "url": "https://hooks.example/?p=#{properties}",
            "body": {"user": "#{traits}", "event": "#{properties}", "note": "got #{properties}"},
        }
    )
    webhook = fired(
        click(engine, traits={"plan": "pro", "age": 31}, properties={"sku": "A-1", "n": 2})
    )
    assert webhook.body == {
        "user": {"plan": "pro", "age": 31},
        "event": {"sku": "A-1", "n": 2},
        "note": 'got {"sku":"A-1","n":2}',
    }
    assert httpx.URL(webhook.url).params["p"] == '{"sku":"A-1","n":2}'


@pytest.mark.parametrize("control", ["\x01", "\x1b", "\x7f", "\x0b"])
def test_any_control_character_in_a_rendered_header_suppresses(control: str) -> None:
    engine = engine_with({"url": "https://hooks.example/", "headers": {"X-User": "#{user_id}"}})
    outcome = click(engine, user_id=f"u{control}1")
    assert outcome.webhooks == []
    assert [(d.outcome, d.reason) for d in outcome.decisions] == [("suppressed", "invalid_header")]
    assert fired(click(engine, user_id="u\t1")).headers == {"X-User": "u\t1"}  # tab is allowed
