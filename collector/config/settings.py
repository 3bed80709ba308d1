"""Loading and checking configuration: the config file, `TRIPWIRE_*` overrides, and Settings.

`load_config` decodes a YAML or JSON file into `schema.ConfigFile`, collecting every mistake with
its path (`campaigns[2].trigger.where.all[0]: unknown operator 'equal'`) rather than stopping at
the first, then checks what a type cannot: references between names, cycles, rates, timezones.
"""

from __future__ import annotations

import ipaddress
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import yaml

from collector.config import schema
from collector.config.registry import (
    NUMERIC_STATS,
    OPERATORS,
    STATS,
    TEXT_OPERATORS,
    TIME_OPERATORS,
    TIME_STATS,
)
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
from collector.config.secrets import InvalidSecret, decode_secret
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
    _check_campaign(campaign, "", config, later)
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


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


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
                problems.append(f"{_join(path, str(key))}: unknown key")
        for name, field in fields.items():
            if name in raw:
                before = len(problems)
                value = _convert(raw[name], field.type, _join(path, name), problems)
                if value is not None or len(problems) == before:  # whole, or what could be had
                    values[field.name] = value
                elif field.required:
                    failed = True
            elif field.required:
                problems.append(f"{_join(path, name)}: required")
                failed = True
        return None if failed else typ(**values)
    if origin is list and isinstance(raw, list):
        (item_type,) = typing.get_args(typ)
        items = []
        for index, item in enumerate(raw):
            before = len(problems)
            value = _convert(item, item_type, _join(path, index), problems)
            if value is not None or len(problems) == before:
                items.append(value)
            elif (stand_in := _stand_in(item_type, index)) is not None:
                items.append(stand_in)
        return items
    if origin is dict and isinstance(raw, dict):
        key_type, value_type = typing.get_args(typ)
        entries = {}
        for key, value in raw.items():
            where = _join(path, str(key))
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


def config_warnings(config: ConfigFile) -> list[str]:
    """`path: message` for each valid setting whose meaning changed or that does nothing."""
    warnings: list[str] = []
    for index, campaign in enumerate(config.campaigns):
        warnings.extend(campaign_warnings(campaign, f"campaigns[{index}]"))
    return warnings


def campaign_warnings(campaign: CampaignSpec, path: str = "") -> list[str]:
    """Warnings about one campaign: frequencies that relied on the old "every event" meaning."""
    found: list[str] = []
    frequency = campaign.frequency
    where = _join(path, "frequency")
    if frequency is None:
        found.append(
            f"{where}: not set, so the campaign fires at most once per session (the default); "
            "older versions fired on every matching event: add `frequency: {per: event}` for that"
        )
        return found
    if frequency.per is None:
        found.append(
            f"{where}.per: not set, so the campaign fires at most once per session (the "
            "default); older versions applied only the caps: add `per: event` for that"
        )
    elif frequency.per == "user" and frequency.max_total is None:
        found.append(
            f"{where}.per: 'user' now means at most once per user; older versions fired on "
            "every matching event unless max_total was set (add `max_total: 1` to say you mean it)"
        )
    elif frequency.per == "user" and frequency.max_total is not None and frequency.max_total > 1:
        found.append(
            f"{where}.max_total: {frequency.max_total} has no effect with `per: user` (at most "
            f"once per user); for up to {frequency.max_total} deliveries per user use `per: event`"
        )
    elif frequency.per == "session" and frequency.max_total == 1:
        found.append(
            f"{where}.max_total: 1 with `per: session` now means once per user (max_total counts "
            "across all time); older versions meant once per session: drop max_total for that"
        )
    return found


# -- checks a type cannot express ------------------------------------------------------------


def _check_identity(config: ConfigFile, problems: list[str]) -> None:
    """Identity secrets long enough to resist guessing; server keys apart from public ones."""
    for index, secret in enumerate(config.identity.secrets):
        if len(secret) < 16:
            problems.append(
                f"identity.secrets[{index}]: at least 16 characters (a long random string)"
            )
    public = set(config.write_keys)
    for index, key in enumerate(config.identity.server_write_keys):
        if key in public:
            problems.append(
                f"identity.server_write_keys[{index}]: {key!r} is also in write_keys, which "
                "browsers see; a server key must be kept on servers only"
            )


def check_config(config: ConfigFile, problems: list[str]) -> None:
    """Append every cross-reference, cycle, rate and secret problem of a decoded config."""
    for index, secret in enumerate(config.webhooks.signing_secrets):
        try:
            decode_secret(secret)
        except InvalidSecret as exc:
            problems.append(f"webhooks.signing_secrets[{index}]: {exc}")
    _check_identity(config, problems)
    for name, variable in config.variables.items():
        path = f"variables.{name}"
        if variable.field is None and STATS[variable.stat].needs_field:
            problems.append(f"{path}.field: stat '{variable.stat}' needs a field")
        if variable.where is not None:
            _check_condition(variable.where, f"{path}.where", config, problems)
    for name, condition in config.segments.items():
        _check_condition(condition, f"segments.{name}", config, problems)
    _check_segment_cycles(config, problems)
    if config.test_users is not None:
        _check_condition(config.test_users, "test_users", config, problems)
    _check_limits(config, problems)
    seen: set[str] = set()
    for index, campaign in enumerate(config.campaigns):
        path = f"campaigns[{index}]"
        if campaign.id in seen:
            problems.append(f"{path}.id: duplicate campaign id {campaign.id!r}")
        seen.add(campaign.id)
        _check_campaign(campaign, path, config, problems)


_HOST_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,253}$")


def _check_limits(config: ConfigFile, problems: list[str]) -> None:
    """Durations that must not be zero, and allow-list entries that must be addresses."""
    durations = {
        "session_timeout": config.session_timeout,
        "webhooks.timeout": config.webhooks.timeout,
        "webhooks.max_age": config.webhooks.max_age,
        "state.user_ttl": config.state.user_ttl,
        "server.header_timeout": config.server.header_timeout,
        "server.body_timeout": config.server.body_timeout,
        "server.keep_alive_timeout": config.server.keep_alive_timeout,
    }
    for path, seconds in durations.items():
        if seconds <= 0:
            problems.append(f"{path}: must be more than zero")
    for index, entry in enumerate(config.webhooks.allow_list):
        text = entry.strip().strip("[]")
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            if "/" in text or ":" in text or not _HOST_NAME.match(text):
                problems.append(
                    f"webhooks.allow_list[{index}]: {exc} (give a host name, an IP or a CIDR)"
                )


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


REDIS_SCHEMES = ("redis", "rediss", "unix")


def is_redis_url(store: str) -> bool:
    """True when a `--store` value names a Redis server (by TCP, TLS or a Unix socket)."""
    return urlsplit(store).scheme in REDIS_SCHEMES


def check_store(store: str, problems: list[str]) -> None:
    """`memory`, a Redis URL with a host and a numeric port, or a unix:// socket path."""
    if store == "memory":
        return
    parts = urlsplit(store)
    if parts.scheme == "unix" and parts.path:
        return
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        problems.append(
            f"--store: {store!r}; use memory, redis://host:port/db or unix:///path/to/redis.sock"
        )
        return
    try:
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        problems.append(f"--store: {store!r}: the port is not a number from 1 to 65535")


def _check_campaign(
    campaign: CampaignSpec, path: str, config: ConfigFile, problems: list[str]
) -> None:
    if (campaign.action is None) == (campaign.variants is None):
        problems.append(f"{_join(path, 'action')}: give exactly one of 'action' or 'variants'")
    if campaign.variants is not None:
        if not campaign.variants:
            problems.append(f"{_join(path, 'variants')}: expected at least one variant")
        if sum(v.rate for v in campaign.variants) > 100:
            problems.append(f"{_join(path, 'variants')}: rates add up to more than 100")
        ids = [v.id for v in campaign.variants]
        if len(set(ids)) != len(ids):
            problems.append(f"{_join(path, 'variants')}: variant ids must be unique")
    for i, segment in enumerate(campaign.target.segments):
        if segment not in config.segments:
            problems.append(f"{_join(path, 'target.segments')}[{i}]: unknown segment {segment!r}")
    trigger = campaign.trigger
    if trigger is not None:
        tpath = _join(path, "trigger")
        kinds = [trigger.event, trigger.segment_entered, trigger.after]
        if sum(kind is not None for kind in kinds) != 1:
            problems.append(f"{tpath}: give exactly one of 'event', 'segment_entered' or 'after'")
        if trigger.segment_entered is not None and trigger.segment_entered not in config.segments:
            problems.append(f"{tpath}.segment_entered: unknown segment {trigger.segment_entered!r}")
        if trigger.where is not None:
            if trigger.event is None and trigger.after is None:
                problems.append(f"{tpath}.where: only an event or 'after' trigger takes 'where'")
            _check_condition(trigger.where, f"{tpath}.where", config, problems)
        if trigger.after is not None and trigger.wait is None:
            problems.append(f"{tpath}.wait: required with 'after' (e.g. wait: 30m)")
        if trigger.after is None:
            for key in ("wait", "unless"):
                if getattr(trigger, key) is not None:
                    problems.append(f"{tpath}.{key}: only an 'after' trigger takes '{key}'")
        if trigger.wait is not None and trigger.wait <= 0:
            problems.append(f"{tpath}.wait: must be longer than 0 s")
        if trigger.unless is not None and trigger.unless.where is not None:
            _check_condition(trigger.unless.where, f"{tpath}.unless.where", config, problems)
    actions: list[tuple[str, Action]] = []
    if campaign.action is not None:
        actions.append((_join(path, "action.webhook"), campaign.action))
    for index, variant in enumerate(campaign.variants or ()):
        actions.append((_join(path, f"variants[{index}].action.webhook"), variant.action))
    for where, action in actions:
        _check_webhook(action.webhook, where, problems)
    schedule = campaign.schedule
    if (
        schedule
        and schedule.start
        and schedule.end
        and _aware(schedule.end) <= _aware(schedule.start)
    ):
        problems.append(f"{_join(path, 'schedule.end')}: must be after start")


_URL_START = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//((?:#\{[^{}]*\}?|[^/?#])*))?")


def _check_webhook(webhook: WebhookAction, path: str, problems: list[str]) -> None:
    """The URL must be http(s) with a fixed host; every template must be well formed."""
    url = webhook.url
    start = _URL_START.match(url)
    if start is None or start.group(1).lower() not in ("http", "https"):
        problems.append(f"{path}.url: expected an http:// or https:// URL, got {url!r}")
    elif start.group(3) is None or not start.group(3).strip():
        problems.append(f"{path}.url: no host in {url!r}")
    elif "#{" in start.group(3):
        problems.append(
            f"{path}.url: the host cannot be a template ({start.group(3)!r}); placeholders may "
            "go in the path and query"
        )
    _check_template(url, f"{path}.url", problems)
    for name, value in webhook.headers.items():
        _check_template(value, f"{path}.headers.{name}", problems)
    _check_body(webhook.body, f"{path}.body", problems)


def _check_body(body: Any, path: str, problems: list[str]) -> None:
    if isinstance(body, str):
        _check_template(body, path, problems)
    elif isinstance(body, dict):
        for key, value in body.items():
            _check_body(value, f"{path}.{key}", problems)
    elif isinstance(body, list):
        for index, value in enumerate(body):
            _check_body(value, f"{path}[{index}]", problems)


def _check_template(text: str, path: str, problems: list[str]) -> None:
    """`#{` must open a placeholder closed by `}` (names are checked when compiling)."""
    rest = PLACEHOLDER.sub("", text)
    opened = rest.find("#{")
    if opened >= 0:
        fragment = rest[opened : opened + 30]
        problems.append(f"{path}: unclosed placeholder {fragment!r} (write #{{name}})")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def _check_types(leaf: Leaf, path: str, stat: str, what: str, problems: list[str]) -> None:
    """A numeric variable or count compared with something that is not a number."""
    if stat not in NUMERIC_STATS:
        return  # latest, previous, first: whatever the field holds
    op = leaf.op
    where = f"{path}.{op}"
    if op in TIME_OPERATORS:
        if stat not in TIME_STATS:
            problems.append(f"{where}: {what} is a number, not a time; use gt, gte, lt or lte")
        return
    if op in TEXT_OPERATORS:
        problems.append(f"{where}: {what} is a number; '{op}' compares text")
        return
    shape = OPERATORS[op].value if op in OPERATORS else None
    if shape in ("pair", "list"):
        values = leaf.value if isinstance(leaf.value, list) else []
    elif shape in ("any", "scalar"):
        values = [leaf.value]
    else:
        return
    for value in values:
        if not _is_number(value) and not (value is None and op in ("eq", "ne", "in", "not_in")):
            problems.append(f"{where}: {what} is a number; expected a number, got {value!r}")
            return


def _aware(moment: Any) -> Any:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _check_condition(
    tree: ConditionTree, path: str, config: ConfigFile, problems: list[str]
) -> None:
    for leaf_path, leaf in _leaves(tree.root, path):
        if leaf.kind == "var":
            variable = config.variables.get(leaf.name)
            if variable is None:
                problems.append(f"{leaf_path}.var: unknown variable {leaf.name!r}")
            else:
                what = f"variable '{leaf.name}' ({variable.stat})"
                _check_types(leaf, leaf_path, variable.stat, what, problems)
        if leaf.kind == "event_count":
            _check_types(leaf, leaf_path, "count", f"event_count '{leaf.name}'", problems)
        if leaf.kind == "segment" and leaf.name not in config.segments:
            problems.append(f"{leaf_path}.segment: unknown segment {leaf.name!r}")


def _leaves(tree: schema.Condition, path: str) -> typing.Iterator[tuple[str, Leaf]]:
    if isinstance(tree, Leaf):
        yield path, tree
    elif isinstance(tree, schema.Not):
        yield from _leaves(tree.item, f"{path}.not")
    else:
        key = "all" if isinstance(tree, schema.All) else "any"
        for i, item in enumerate(tree.items):
            yield from _leaves(item, f"{path}.{key}[{i}]")


def segment_references(raw: Any) -> set[str]:
    """Names of the segments a raw condition mentions (for ordering and cycle checks)."""
    found: set[str] = set()
    if isinstance(raw, dict):
        if isinstance(raw.get("segment"), str):
            found.add(raw["segment"])
        for value in raw.values():
            found |= segment_references(value)
    elif isinstance(raw, list):
        for item in raw:
            found |= segment_references(item)
    return found


def _check_segment_cycles(config: ConfigFile, problems: list[str]) -> None:
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2 or name not in config.segments:
            return
        if state.get(name) == 1:
            cycle = [*trail[trail.index(name) :], name]
            problems.append(f"segments.{name}: cycle {' -> '.join(cycle)}")
            return
        state[name] = 1
        for ref in sorted(segment_references(config.segments[name].raw)):
            visit(ref, [*trail, name])
        state[name] = 2

    for name in config.segments:
        visit(name, [])


# -- settings --------------------------------------------------------------------------------

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
