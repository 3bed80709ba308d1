"""Config files: every mistake reported with its path, durations, JSON, environment overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from collector.config.settings import build_settings, decode_config, load_config
from collector.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tripwire.yaml"


def tripwire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_check_accepts_the_example_config() -> None:
    result = tripwire("check", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "1 campaigns" in result.stdout


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
