"""Config files: every mistake reported with its path, durations, JSON, environment overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from collector.config.settings import build_settings, decode_config, load_config
from collector.errors import ConfigError
from tests.support.paths import ROOT

EXAMPLE = ROOT / "examples" / "tripwire.yaml"


def tripwire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_check_accepts_the_example_config() -> None:
    result = tripwire("check", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(": OK — 2 campaigns, 3 variables, 1 segment\n")


def test_check_prints_every_mistake_with_its_path(tmp_path: Path) -> None:
    config = tmp_path / "tripwire.yaml"
    config.write_text(
        """
write_keys: [k]
variables:
  views: {event: page, stat: count, window: fortnight}
campaigns:
  - id: first
    action: {webhook: {url: "https://example.com"}}
  - id: second
    action: {webhook: {url: "https://example.com", method: GET}}
  - id: third
    trigger: {event: page, where: {all: [{prop: plan, equal: pro}]}}
    action: {webhook: {url: "https://example.com", retries: 3}}
"""
    )
    result = tripwire("check", str(config))
    assert result.returncode != 0
    problems = result.stderr.strip().splitlines()
    assert problems == [
        "variables.views.window: invalid window 'fortnight' "
        "(use all, session, previous_session, today, Nd or Nh)",
        "campaigns[2].trigger.where.all[0]: unknown operator 'equal'",
        "campaigns[2].action.webhook.retries: unknown key",
    ]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone: unknown timezone 'Mars/Olympus'"),
        ({"session_timeout": "soon"}, "session_timeout: invalid duration 'soon'"),
        (
            {"campaigns": [{"id": "a"}]},
            "campaigns[0].action: give exactly one of 'action' or 'variants'",
        ),
        (
            {
                "campaigns": [
                    {
                        "id": "a",
                        "target": {"segments": ["vip"]},
                        "action": {"webhook": {"url": "u"}},
                    }
                ]
            },
            "campaigns[0].target.segments[0]: unknown segment 'vip'",
        ),
        (
            {"segments": {"a": {"segment": "b"}, "b": {"segment": "a"}}},
            "segments.a: cycle a -> b -> a",
        ),
        ({"segments": {"s": {"var": "nope", "gt": 1}}}, "segments.s.var: unknown variable 'nope'"),
        (
            {"segments": {"s": {"trait": "x", "regex": "("}}},
            "segments.s.regex: invalid regular expression",
        ),
        (
            {"segments": {"s": {"trait": "x", "regex": r"^(a)\1$"}}},
            "segments.s.regex: invalid regular expression",
        ),
        (
            {"segments": {"s": {"trait": "x", "regex": "(?<=a)b"}}},
            "segments.s.regex: invalid regular expression",
        ),
        (
            {
                "campaigns": [
                    {
                        "id": "a",
                        "variants": [
                            {"id": "x", "rate": 60, "action": {"webhook": {"url": "u"}}},
                            {"id": "y", "rate": 50, "action": {"webhook": {"url": "u"}}},
                        ],
                    }
                ]
            },
            "campaigns[0].variants: rates add up to more than 100",
        ),
        (
            {"variables": {"v": {"event": "page", "stat": "sum"}}},
            "variables.v.field: stat 'sum' needs a field",
        ),
        ({"webhooks": {"signing_secrets": ["whsec_!!"]}}, "webhooks.signing_secrets[0]: "),
    ],
)
def test_each_kind_of_mistake_is_reported(raw: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        decode_config(raw)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_durations_and_json_configs(tmp_path: Path) -> None:
    file = tmp_path / "tripwire.json"
    file.write_text(
        json.dumps({"write_keys": ["k"], "session_timeout": "45m", "webhooks": {"max_age": "2d"}})
    )
    config = load_config(file)
    assert config.session_timeout == 45 * 60
    assert config.webhooks.max_age == 2 * 86400


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    settings = build_settings(
        {"config_path": str(EXAMPLE), "port": 9123},
        {
            "TRIPWIRE_PORT": "9000",
            "TRIPWIRE_STORE": "redis://127.0.0.1:1/0",
            "TRIPWIRE_ADMIN_TOKEN": "t",
            "TRIPWIRE_WRITE_KEYS": "a, b",
        },
    )
    assert settings.port == 9123
    assert settings.store == "redis://127.0.0.1:1/0"
    assert settings.admin_token == "t"
    assert settings.config.write_keys == ["a", "b"]
    assert settings.config.campaigns[0].id == "cart-followup"


def test_check_warns_about_frequencies_that_relied_on_the_old_meaning(tmp_path: Path) -> None:
    config = tmp_path / "tripwire.yaml"
    config.write_text(
        """
campaigns:
  - {id: unset, action: {webhook: {url: "https://example.com"}}}
  - {id: user, frequency: {per: user}, action: {webhook: {url: "https://example.com"}}}
  - {id: capped, frequency: {max_per_day: 2}, action: {webhook: {url: "https://example.com"}}}
  - id: fine
    frequency: {per: session, max_total: 3, max_per_day: 1}
    action: {webhook: {url: "https://example.com"}}
  - {id: every, frequency: {per: event}, action: {webhook: {url: "https://example.com"}}}
"""
    )
    result = tripwire("check", str(config))
    assert result.returncode == 0, result.stderr
    assert "OK — 5 campaigns" in result.stdout
    warnings = result.stderr.strip().splitlines()
    assert [w.split(": ")[1:3] for w in warnings] == [
        ["warning", "campaigns[0].frequency"],
        ["warning", "campaigns[1].frequency.per"],
        ["warning", "campaigns[2].frequency.per"],
    ]
    assert "once per session" in warnings[0] and "per: event" in warnings[0]
    assert "once per user" in warnings[1]


def test_check_reports_every_error_of_a_file_in_one_run(tmp_path: Path) -> None:
    config = tmp_path / "tripwire.yaml"
    config.write_text(
        """
timezone: Mars/Olympus
variables:
  cart_views: {event: page, stat: count, window: fortnight}
  spent: {event: Order, field: properties.revenue, stat: sum}
  broken: {event: Order, stat: median}
segments:
  big: {var: spent, gte: lots}
  uses_broken: {var: broken, gt: 1}
campaigns:
  - id: first
    frequency: {per: week}
    trigger: {event: page, where: {var: cart_views, gte: two}}
    action: {webhook: {url: notaurl}}
  - id: second
    colour: red
    action: {webhook: {url: "https://#{host}/x", body: {n: "#{cart_views"}}}
  - id: third
    action: {webhook: {url: "file:///etc/passwd", method: YEET}}
  - id: fourth
    trigger: {event: page, where: {event_count: Order, starts_with: "1"}}
    action: {webhook: {url: "https://example.com/#{nope}"}}
"""
    )
    result = tripwire("check", str(config))
    assert result.returncode != 0
    problems = result.stderr.strip().splitlines()
    assert sorted(problems) == sorted(
        [
            # what cannot be decoded...
            "timezone: unknown timezone 'Mars/Olympus'",
            "variables.cart_views.window: invalid window 'fortnight' "
            "(use all, session, previous_session, today, Nd or Nh)",
            "variables.broken.stat: expected one of count, sum, avg, min, max, latest, previous, "
            "first, distinct_count, first_at, last_at, top, mode, last_unique; got 'median'",
            "campaigns[0].frequency.per: expected one of event, session, user; got 'week'",
            "campaigns[1].colour: unknown key",
            "campaigns[2].action.webhook.method: "
            "expected one of GET, POST, PUT, PATCH, DELETE; got 'YEET'",
            # ...what the checks find in the rest...
            "segments.big.gte: variable 'spent' (sum) is a number; expected a number, got 'lots'",
            "campaigns[0].trigger.where.gte: variable 'cart_views' (count) is a number; "
            "expected a number, got 'two'",
            "campaigns[0].action.webhook.url: expected an http:// or https:// URL, got 'notaurl'",
            "campaigns[1].action.webhook.url: the host cannot be a template ('#{host}'); "
            "placeholders may go in the path and query",
            "campaigns[1].action.webhook.body.n: unclosed placeholder '#{cart_views' "
            "(write #{name})",
            "campaigns[2].action.webhook.url: "
            "expected an http:// or https:// URL, got 'file:///etc/passwd'",
            "campaigns[3].trigger.where.starts_with: event_count 'Order' is a number; "
            "'starts_with' compares text",
            # ...and what compiling finds: names in templates (not the host's again)
            "campaigns[3].action.webhook.url: unknown variable 'nope'",
        ]
    )
    # a broken variable is still known by name: no "unknown variable 'broken'" follows


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.example/#{campaign_id}?u=#{user_id}", None),
        ("http://127.0.0.1:8000/bin/x", None),
        ("notaurl", "expected an http:// or https:// URL"),
        ("file:///etc/passwd", "expected an http:// or https:// URL"),
        ("ftp://example.com/x", "expected an http:// or https:// URL"),
        ("https:///path", "no host"),
        ("#{base_url}/x", "expected an http:// or https:// URL"),
        ("https://#{tenant}.example.com/x", "the host cannot be a template"),
        ("https://example.com/#{user_id", "unclosed placeholder"),
    ],
)
def test_webhook_urls_are_checked(url: str, problem: str | None) -> None:
    campaign = {"id": "c", "frequency": {"per": "event"}, "action": {"webhook": {"url": url}}}
    raw = {"campaigns": [campaign]}
    if problem is None:
        decode_config(raw)
        return
    with pytest.raises(ConfigError) as caught:
        decode_config(raw)
    assert any(
        p.startswith("campaigns[0].action.webhook.url: ") and problem in p
        for p in caught.value.problems
    ), caught.value.problems
