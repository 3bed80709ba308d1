"""The extension points are declared once: schema, checker and engine agree with the registry."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from collector.config import registry, schema
from collector.config.settings import decode_config
from collector.engine import variables
from collector.engine.engine import Engine, compile_rules, new_state
from collector.errors import ConfigError
from collector.events import Event


def test_the_schema_names_exactly_the_registered_operators_and_stats() -> None:
    assert set(get_args(schema.ValueOperator)) == set(registry.OPERATORS)
    assert set(get_args(schema.Stat)) == set(registry.STATS)


def test_the_engine_implements_every_registered_stat() -> None:
    plain = {name for name, stat in registry.STATS.items() if not stat.sized}
    assert set(variables.STATS) == plain


def _config(condition: dict[str, Any], stat: str = "latest", **extra: Any) -> dict[str, Any]:
    variable: dict[str, Any] = {"event": "Step", "stat": stat, **extra}
    if registry.STATS[stat].needs_field:
        variable["field"] = "properties.n"
    return {
        "write_keys": ["k"],
        "variables": {"v": variable},
        "campaigns": [
            {
                "id": "c",
                "status": "published",
                "trigger": {"event": "Step", "where": condition},
                "action": {"webhook": {"url": "http://127.0.0.1:9/hook"}},
            }
        ],
    }


EXAMPLES: dict[str, Any] = {
    "any": "pro",
    "scalar": 10,
    "text": "pro",
    "pair": [1, 5],
    "list": ["a", "b"],
    "pattern": "^p",
    "flag": True,
    "duration": "1h",
}
BAD: dict[str, Any] = {
    "scalar": {"a": 1},
    "text": ["x"],
    "pair": [1],
    "list": "a",
    "pattern": 5,
    "flag": "yes",
    "duration": "soon",
}


@pytest.mark.parametrize("op", sorted(registry.OPERATORS))
def test_every_operator_takes_a_value_of_its_shape_and_refuses_another(op: str) -> None:
    shape = registry.OPERATORS[op].value
    decode_config(_config({"trait": "plan", op: EXAMPLES[shape]}))
    if shape in BAD:
        with pytest.raises(ConfigError) as refused:
            decode_config(_config({"trait": "plan", op: BAD[shape]}))
        assert f".{op}" in str(refused.value)


@pytest.mark.parametrize("op", sorted(registry.OPERATORS))
def test_a_missing_operand_gives_what_the_registry_says(op: str) -> None:
    value = False if op == "exists" else EXAMPLES[registry.OPERATORS[op].value]
    config = decode_config(_config({"trait": "absent", op: value}))
    engine = Engine(compile_rules(config))
    event = Event(
        type="track", name="Step", message_id="m", anonymous_id="a", timestamp=1.0,
        received_at=1.0,
    )
    outcome = engine.process(new_state("a:a", 1.0), event, 1.0)
    expected = True if op == "exists" else registry.OPERATORS[op].when_missing
    assert bool(outcome.webhooks) is expected


@pytest.mark.parametrize("op", sorted(registry.TEXT_OPERATORS))
def test_a_numeric_variable_refuses_text_operators(op: str) -> None:
    condition = {"var": "v", op: EXAMPLES[registry.OPERATORS[op].value]}
    with pytest.raises(ConfigError, match="is a number"):
        decode_config(_config(condition, stat="count"))


@pytest.mark.parametrize("op", sorted(registry.TIME_OPERATORS))
def test_time_operators_fit_only_time_statistics(op: str) -> None:
    decode_config(_config({"var": "v", op: "1h"}, stat="last_at"))
    with pytest.raises(ConfigError, match="not a time"):
        decode_config(_config({"var": "v", op: "1h"}, stat="count"))
