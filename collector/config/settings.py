"""Loading and checking configuration: the config file, `TRIPWIRE_*` overrides, and Settings.

`load_config` decodes a YAML or JSON file into `schema.ConfigFile`, collecting every mistake with
its path (`campaigns[2].trigger.where.all[0]: unknown operator 'equal'`) rather than stopping at
the first, then checks what a type cannot: references between names, cycles, rates, timezones.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from collector.config.checks import check_campaign, check_config, check_store, join_path
from collector.config.schema import (
    PLACEHOLDER,
    Action,
    CampaignSpec,
    ConditionTree,
    ConfigFile,
    Leaf,
    TimezoneName,
    VariableSpec,
    Variant,
    WebhookAction,
    decode_hook,
    parse_condition,
)
from collector.errors import ConfigError


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a process needs to run, built once by the CLI and passed down."""

    config: ConfigFile = ConfigFile()
    config_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    store: str = "memory"  # "memory" or a redis:// URL
    workers: int = 1
    data_dir: str | None = ".tripwire"  # None: memory mode keeps nothing (benchmark baselines)
    admin_token: str | None = None
    metrics_token: str | None = None  # opens /metrics (as does the admin token); unset: closed
    request_bin: bool = False
    deliver_in_process: bool = True


# -- decoding with every error reported ------------------------------------------------------


Verify = Callable[[ConfigFile], object]
"""A further check of a decoded config (compiling it), raising ConfigError with its problems."""


def decode_config(raw: Any, verify: Verify | None = None) -> ConfigFile:
    """Turn parsed YAML/JSON into a checked ConfigFile, or raise ConfigError with every problem.

    Every problem comes in one round: a part that cannot be decoded is reported and left out
    (or stood in for, see `_stand_in`), and the rest is still checked, and compiled by
    `verify` when given; problems that only follow from a part already reported are dropped.
    """
    problems: list[str] = []
    if raw is None:
        raw = {}
    config: ConfigFile | None = _convert(raw, ConfigFile, "", problems)
    if config is None:
        raise ConfigError(problems)
    later: list[str] = []
    check_config(config, later)
    _verify(config, verify, problems or later, later)
    _add_unrelated(problems, later)
    if problems:
        raise ConfigError(problems)
    return config


def decode_campaign(
    raw: Any, config: ConfigFile, verify: Callable[[CampaignSpec], object] | None = None
) -> CampaignSpec:
    """Decode one campaign (admin API) against an existing config, with the same checks."""
    problems: list[str] = []
    campaign: CampaignSpec | None = _convert(raw, CampaignSpec, "", problems)
    if campaign is None:
        raise ConfigError(problems)
    later: list[str] = []
    check_campaign(campaign, "", config, later)
    _verify(campaign, verify, problems or later, later)
    _add_unrelated(problems, later)
    if problems:
        raise ConfigError(problems)
    return campaign


def _verify(value: Any, verify: Callable[[Any], object] | None, known: list[str],
            problems: list[str]) -> None:
    if verify is None:
        return
    try:
        verify(value)
    except ConfigError as exc:
        problems.extend(_not_echoes(exc.problems, problems))
    except Exception:  # a config already known to be broken may trip the compiler otherwise
        if not known:
            raise


_HOST_TEMPLATE = re.compile(r"^(.*): the host cannot be a template \((.*)\);")
_UNKNOWN_NAME = re.compile(r"^(.*): unknown variable '(.*)'$")


def _not_echoes(compiled: list[str], checked: list[str]) -> list[str]:
    """The compiler's problems less those repeating a checked one: a placeholder in a URL's
    host is reported as such, not again as an unknown variable."""
    in_hosts: set[tuple[str, str]] = set()
    for problem in checked:
        match = _HOST_TEMPLATE.match(problem)
        if match is not None:
            path, host = match.groups()
            in_hosts.update(
                (path, inside.partition("|")[0].strip()) for inside in PLACEHOLDER.findall(host)
            )
    echoes: set[str] = set()
    for problem in compiled:
        match = _UNKNOWN_NAME.match(problem)
        if match is not None and match.groups() in in_hosts:
            echoes.add(problem)
    return [p for p in compiled if p not in echoes]


def _path_of(problem: str) -> str:
    return problem.split(": ", 1)[0]


def _related(a: str, b: str) -> bool:
    """Whether one path is the other or inside it."""
    if len(a) > len(b):
        a, b = b, a
    return b == a or (b.startswith(a) and b[len(a)] in ".[") or not a


def _add_unrelated(problems: list[str], later: list[str]) -> None:
    """Add the later checks' problems that are not mere consequences of a decoding problem."""
    failed = [_path_of(p) for p in problems]
    for problem in later:
        path = _path_of(problem)
        if problem not in problems and not any(_related(path, f) for f in failed):
            problems.append(problem)


def load_config(path: str | Path, verify: Verify | None = None) -> ConfigFile:
    """Read a config file (YAML, or JSON by extension or content) and decode it."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from exc
    kind = "JSON" if file.suffix == ".json" else "YAML"
    try:
        if file.suffix == ".json":
            raw = msgspec.json.decode(text)
            check_integers(raw, "$")
        else:
            raw = parse_yaml(text)
    except (msgspec.DecodeError, yaml.YAMLError, ValueError) as exc:
        raise ConfigError([f"{path}: not valid {kind}: {one_line(exc)}"]) from exc
    except RecursionError as exc:
        raise ConfigError([f"{path}: not valid {kind}: nested too deeply"]) from exc
    return decode_config(raw, verify)


MAX_YAML_DEPTH = 64


def parse_yaml(text: str) -> Any:
    """Parse YAML safely: ValueError for nesting deeper than MAX_YAML_DEPTH or huge integers.

    PyYAML builds nested values recursively, and reads a 5,000-digit integer with int(), which
    refuses it: both are turned into one clear error instead of an exception from deep inside.
    """
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, _OPENING):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ValueError(f"nested deeper than {MAX_YAML_DEPTH} levels")
        elif isinstance(token, _CLOSING):
            depth -= 1
    try:
        raw = yaml.safe_load(text)
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            raise ValueError("an integer has more than 4,300 digits") from None
        raise ValueError(one_line(exc)) from None
    check_integers(raw, "$")
    return raw


def check_integers(value: Any, path: str) -> None:
    """ValueError naming the first integer outside signed 64 bits (stores cannot keep it)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{path}: integer out of range (signed 64 bits)")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_integers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_integers(item, f"{path}[{index}]")


_OPENING = (
    yaml.BlockMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.FlowSequenceStartToken,
)
_CLOSING = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split())


def _stand_in(typ: Any, where: str | int) -> Any:
    """What takes the place of a list or dict item that could not be decoded (None: nothing).

    Standing in keeps later items at their index (`campaigns[3]` stays campaign 3) and keeps
    names known (a broken variable is not then reported as unknown wherever it is used).
    """
    placeholder = Action(webhook=WebhookAction(url="http://stand-in.invalid/"))
    if typ is CampaignSpec:
        return CampaignSpec(id=f"~invalid{where}", action=placeholder)
    if typ is Variant:
        return Variant(id=f"~invalid{where}", rate=0, action=placeholder)
    if typ is VariableSpec:
        return VariableSpec(event=[], stat="latest", field="properties.~invalid")
    if typ is ConditionTree:
        raw = {"trait": "~invalid", "exists": True}
        return ConditionTree(raw, Leaf("trait", "~invalid", "exists", True))
    return None


def _literals(typ: Any) -> tuple[Any, ...] | None:
    """The allowed values of a Literal type (or an optional one), else None."""
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        return typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(members) == 1 and typing.get_origin(members[0]) is typing.Literal:
            return typing.get_args(members[0])
    return None


def _convert(raw: Any, typ: Any, path: str, problems: list[str]) -> Any:
    """Convert raw data to `typ`, reporting every error with its path.

    Returns the value with each failing optional part left at its default and each failing
    list or dict item left out or stood in for (`_stand_in`), so the rest can still be
    checked; None when even that cannot be had (a required part failed).
    """
    start = len(problems)
    origin = typing.get_origin(typ)
    if typ is ConditionTree or (
        origin in (typing.Union, types.UnionType) and ConditionTree in typing.get_args(typ)
    ):
        if raw is None and typ is not ConditionTree:
            return None
        root = parse_condition(raw, path, problems)
        return ConditionTree(raw, root) if root is not None and len(problems) == start else None
    if isinstance(typ, type) and issubclass(typ, msgspec.Struct) and isinstance(raw, dict):
        fields = {f.encode_name: f for f in msgspec.structs.fields(typ)}
        values: dict[str, Any] = {}
        failed = False
        for key in raw:
            if key not in fields:
                problems.append(f"{join_path(path, str(key))}: unknown key")
        for name, field in fields.items():
            if name in raw:
                before = len(problems)
                value = _convert(raw[name], field.type, join_path(path, name), problems)
                if value is not None or len(problems) == before:  # whole, or what could be had
                    values[field.name] = value
                elif field.required:
                    failed = True
            elif field.required:
                problems.append(f"{join_path(path, name)}: required")
                failed = True
        return None if failed else typ(**values)
    if origin is list and isinstance(raw, list):
        (item_type,) = typing.get_args(typ)
        items = []
        for index, item in enumerate(raw):
            before = len(problems)
            value = _convert(item, item_type, join_path(path, index), problems)
            if value is not None or len(problems) == before:
                items.append(value)
            elif (stand_in := _stand_in(item_type, index)) is not None:
                items.append(stand_in)
        return items
    if origin is dict and isinstance(raw, dict):
        key_type, value_type = typing.get_args(typ)
        entries = {}
        for key, value in raw.items():
            where = join_path(path, str(key))
            if key_type is str and not isinstance(key, str):
                problems.append(f"{where}: expected a name, got {type(key).__name__} {key!r}")
                continue
            before = len(problems)
            converted = _convert(value, value_type, where, problems)
            if converted is not None or len(problems) == before:
                entries[key] = converted
            elif (stand_in := _stand_in(value_type, str(key))) is not None:
                entries[key] = stand_in
        return entries
    allowed = _literals(typ)
    if allowed is not None and raw is not None and raw not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        problems.append(f"{path or '$'}: expected one of {choices}; got {raw!r}")
        return None
    if origin in (typing.Union, types.UnionType):
        structs = [
            a for a in typing.get_args(typ) if isinstance(a, type) and issubclass(a, msgspec.Struct)
        ]
        if len(structs) == 1 and isinstance(raw, dict):
            return _convert(raw, structs[0], path, problems)
    try:
        return msgspec.convert(raw, typ, dec_hook=decode_hook)
    except msgspec.ValidationError as exc:
        problems.append(_validation_message(exc, path))
        return None


def _validation_message(exc: msgspec.ValidationError, path: str) -> str:
    message, _, where = str(exc).rpartition(" - at `")
    if not message:
        return f"{path or '$'}: {exc}"
    suffix = where.rstrip("`")[1:]  # drop the leading "$"
    full = (path + suffix) if suffix.startswith("[") or not path else f"{path}{suffix}"
    return f"{full.lstrip('.') or '$'}: {message}"


# -- warnings: valid, but probably not what was meant ---------------------------------------


def check_serving(settings: Settings, problems: list[str]) -> None:
    """What `serve` needs beyond a valid config: a port, workers, a store, write keys.

    (The data directory is checked when memory mode opens it, with the same one-line errors.)
    """
    if not 1 <= settings.port <= 65535:
        problems.append(f"--port: {settings.port} is not a port (1 to 65535)")
    if settings.workers < 1:
        problems.append(f"--workers: {settings.workers}; at least 1")
    check_store(settings.store, problems)
    if not settings.config.write_keys:
        problems.append(
            "write_keys: none, so every event would be refused; add one to the config "
            "(write_keys: [...]) or set TRIPWIRE_WRITE_KEYS"
        )


ENV_PREFIX = "TRIPWIRE_"


def build_settings(
    cli: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    verify: Verify | None = None,
) -> Settings:
    """Combine defaults, the config file, `TRIPWIRE_*` variables and CLI flags (highest wins)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(Settings):
        if field.name == "config":
            continue
        env_value = env.get(ENV_PREFIX + field.name.upper())
        if env_value is not None:
            values[field.name] = env_value
    values.update({k: v for k, v in cli.items() if v is not None})
    config_path = values.get("config_path")
    config = load_config(config_path, verify) if config_path else ConfigFile()
    config = _config_overrides(config, env)
    try:
        return msgspec.convert(
            {**values, "config": config}, Settings, strict=False, from_attributes=True
        )
    except msgspec.ValidationError as exc:
        raise ConfigError([_validation_message(exc, "")]) from exc


def _config_overrides(config: ConfigFile, env: Mapping[str, str]) -> ConfigFile:
    """Apply the few config-file keys that make sense from the environment."""
    changes: dict[str, Any] = {}
    if keys := env.get(ENV_PREFIX + "WRITE_KEYS"):
        changes["write_keys"] = [k.strip() for k in keys.split(",") if k.strip()]
    if timezone := env.get(ENV_PREFIX + "TIMEZONE"):
        try:
            changes["timezone"] = decode_hook(TimezoneName, timezone)
        except ValueError as exc:
            raise ConfigError([f"{ENV_PREFIX}TIMEZONE: {exc}"]) from None
    if secrets := env.get(ENV_PREFIX + "SIGNING_SECRETS"):
        hooks = msgspec.structs.replace(
            config.webhooks, signing_secrets=[s.strip() for s in secrets.split(",") if s.strip()]
        )
        changes["webhooks"] = hooks
    if secrets := env.get(ENV_PREFIX + "IDENTITY_SECRETS"):
        identity = msgspec.structs.replace(
            config.identity, secrets=[s.strip() for s in secrets.split(",") if s.strip()]
        )
        changes["identity"] = identity
    if not changes:
        return config
    updated = msgspec.structs.replace(config, **changes)
    problems: list[str] = []
    check_config(updated, problems)
    if problems:
        raise ConfigError(problems)
    return updated
