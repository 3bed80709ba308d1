"""docs/reference.md describes the whole config, and its examples are configs that check.

The schema is walked from `ConfigFile`: every key (by its path, `campaigns[].trigger.wait`),
every value a key's list of values allows, every condition operand and operator, every
template name and every decision reason must be named in the reference, so adding one to the
code without describing it fails here. `examples/tripwire.yaml` must use every section and
every campaign key.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
import yaml

from collector.admin.dashboard import WHY
from collector.config.schema import OPERAND_KINDS, VALUE_OPERATORS, CampaignSpec, ConfigFile
from collector.config.settings import decode_config
from collector.engine.engine import compile_rules
from collector.engine.templates import BUILTINS, PAGE_FIELDS, WHOLE
from tests.support.paths import ROOT

REFERENCE = ROOT / "docs" / "reference.md"
EXAMPLE = ROOT / "examples" / "tripwire.yaml"
TEXT = REFERENCE.read_text()
BLOCKS = re.findall(r"```yaml\n(.*?)```", TEXT, re.DOTALL)
PROSE = re.sub(r"```.*?```", "", TEXT, flags=re.DOTALL)
NAMED = set(re.findall(r"`([^`]+)`", PROSE))  # everything the text and tables write as code


def _walk(kind: mi.Type, path: str, keys: list[str], values: set[str], seen: set[str]) -> None:
    """Collect key paths (where each struct is first reached) and the values literals allow."""
    if isinstance(kind, mi.StructType):
        if kind.cls.__name__ in seen:
            return
        seen.add(kind.cls.__name__)
        for field in kind.fields:
            field_path = f"{path}.{field.encode_name}" if path else field.encode_name
            keys.append(field_path)
            _walk(field.type, field_path, keys, values, seen)
    elif isinstance(kind, mi.ListType):
        _walk(kind.item_type, f"{path}[]", keys, values, seen)
    elif isinstance(kind, mi.DictType):
        _walk(kind.value_type, f"{path}.NAME", keys, values, seen)
    elif isinstance(kind, mi.UnionType):
        for member in kind.types:
            _walk(member, path, keys, values, seen)
    elif isinstance(kind, mi.LiteralType):
        values.update(str(v) for v in kind.values)


def schema() -> tuple[list[str], set[str]]:
    """Every key path of the config file, and every value a list of allowed values holds."""
    keys: list[str] = []
    values: set[str] = set()
    _walk(mi.type_info(ConfigFile), "", keys, values, set())
    return keys, values


KEYS, VALUES = schema()


def test_the_walk_finds_nested_keys() -> None:
    assert "campaigns[].trigger.unless.where" in KEYS
    assert "variables.NAME.window" in KEYS
    assert "campaigns[].variants[].rate" in KEYS
    assert {"GET", "archived", "last_unique", "visitors", "sun"} <= VALUES


@pytest.mark.parametrize("key", KEYS)
def test_every_config_key_is_described(key: str) -> None:
    assert key in NAMED, f"docs/reference.md does not describe `{key}`"


@pytest.mark.parametrize("value", sorted(VALUES))
def test_every_allowed_value_is_described(value: str) -> None:
    assert value in NAMED, f"docs/reference.md does not name the value `{value}`"


@pytest.mark.parametrize(
    "name",
    [*OPERAND_KINDS, *VALUE_OPERATORS, "all", "any", "not", "previous_session", "today"],
)
def test_every_operand_operator_and_window_is_described(name: str) -> None:
    assert name in NAMED, f"docs/reference.md does not describe `{name}`"


@pytest.mark.parametrize(
    "name", [*BUILTINS, *WHOLE, *(f"page.{f}" for f in PAGE_FIELDS), "traits.X", "properties.X",
             "context.X"],
)
def test_every_template_name_is_described(name: str) -> None:
    assert name in NAMED, f"docs/reference.md does not describe the placeholder `{name}`"


@pytest.mark.parametrize("reason", sorted(WHY))
def test_every_decision_reason_is_described(reason: str) -> None:
    assert reason in NAMED or any(reason in n.split(", ") for n in NAMED), reason


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_every_example_in_the_reference_checks(block: str) -> None:
    decode_config(yaml.safe_load(block), verify=compile_rules)


def _keys_used(value: Any) -> set[str]:
    return set(value) if isinstance(value, dict) else set()


def test_the_example_config_uses_every_section_and_campaign_key() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    decode_config(raw, verify=compile_rules)
    top = {f.encode_name for f in msgspec.structs.fields(ConfigFile)}
    assert top - set(raw) == set()
    campaign_keys = {f.encode_name for f in msgspec.structs.fields(CampaignSpec)}
    used = set().union(*(_keys_used(c) for c in raw["campaigns"]))
    assert campaign_keys - used == set()
