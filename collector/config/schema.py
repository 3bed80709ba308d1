"""The config file's typed structure (SPEC §6): campaigns, variables, segments, conditions.

Everything here is a frozen msgspec Struct decoded with unknown keys rejected. Conditions are
free-form mappings in the file (`{trait: plan, eq: pro}`, `{all: [...]}`), so they are parsed
into the small tree at the bottom of this module by `parse_condition`, which reports every
mistake with its path.
"""

from __future__ import annotations

import re
from datetime import datetime, time
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta

from collector.config.durations import Duration, format_duration, parse_duration
from collector.config.patterns import compile_pattern
from collector.config.registry import OPERATORS


class TimezoneName(str):
    """An IANA timezone name, checked when decoded."""


class ConditionTree:
    """A parsed condition, keeping the mapping it came from (for encoding it back)."""

    __slots__ = ("raw", "root")

    def __init__(self, raw: Any, root: Condition) -> None:
        self.raw = raw
        self.root = root

    def __repr__(self) -> str:
        return f"ConditionTree({self.raw!r})"


class Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Shared options: unknown keys are errors, values are immutable."""


Identifier = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")]
Rate = Annotated[float, Meta(ge=0, le=100)]
Count = Annotated[int, Meta(ge=0)]

Stat = Literal[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "latest",
    "previous",
    "first",
    "distinct_count",
    "first_at",
    "last_at",
    "top",
    "mode",
    "last_unique",
]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
CampaignStatus = Literal["draft", "published", "paused", "archived"]

PLACEHOLDER = re.compile(r"#\{([^{}]*)\}")  # `#{name}` or `#{name|fallback}` in a template
_WINDOW = re.compile(r"^(all|session|previous_session|today|[1-9][0-9]{0,3}[dh])$")
_HOURS = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")


class Window(str):
    """A variable window: all, session, previous_session, today, Nd or Nh."""


class Hours(str):
    """A daily time range, `HH:MM-HH:MM`."""


class WebhookSettings(Base, frozen=True):
    """How webhooks are signed, sent, retried and guarded."""

    signing_secrets: list[str] = []
    timeout: Duration = Duration(10.0)
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 10
    max_age: Duration = Duration(86400.0)
    allow_private_networks: bool = False
    allow_list: list[str] = []
    monthly_quota: Count | None = None
    concurrency_per_endpoint: Annotated[int, Meta(ge=1, le=1000)] = 8


class VariableSpec(Base, frozen=True):
    """A per-user value computed from events (ユーザー情報変数)."""

    event: str | list[str]
    stat: Stat
    field: str | None = None
    where: ConditionTree | None = None
    window: Window = Window("all")
    default: Any = None
    size: Annotated[int, Meta(ge=1, le=50)] = 5  # how many values `top` / `last_unique` keep


class Schedule(Base, frozen=True):
    """When a campaign may fire, in the config's timezone unless times carry an offset."""

    start: datetime | None = None
    end: datetime | None = None
    days: list[Weekday] | None = None
    hours: Hours | None = None


class Target(Base, frozen=True):
    """Who a campaign is for: everyone, identified members or anonymous visitors, in segments."""

    users: Literal["all", "members", "visitors"] = "all"
    segments: list[str] = []


class Unless(Base, frozen=True):
    """The event that cancels an absence trigger's pending wait (optionally filtered)."""

    event: Annotated[str, Meta(min_length=1)]
    where: ConditionTree | None = None


class Trigger(Base, frozen=True):
    """What a user must just have done (an event, entering a segment) or failed to do.

    An absence trigger (`after`, `wait`, optional `unless`) fires `wait` after the `after` event
    (the `where` filters it) unless the `unless` event came meanwhile.
    """

    event: str | None = None
    where: ConditionTree | None = None
    segment_entered: str | None = None
    after: str | None = None
    wait: Duration | None = None
    unless: Unless | None = None


FrequencyPer = Literal["event", "session", "user"]
DEFAULT_PER: FrequencyPer = "session"  # the seed's recommended base frequency


class Frequency(Base, frozen=True):
    """How often a campaign may fire for one user.

    `per` is the base frequency: `event` fires on every matching event, `session` at most once
    per session, `user` at most once per user (DEFAULT_PER when not given). `max_total` and
    `max_per_day` cap the user's deliveries on top of it, across all time and per calendar day
    of the configured timezone.
    """

    per: FrequencyPer | None = None
    max_total: Annotated[int, Meta(ge=1)] | None = None
    max_per_day: Annotated[int, Meta(ge=1)] | None = None


class Stop(Base, frozen=True):
    """When a campaign stops firing for everybody: after N deliveries in total or in one day."""

    max_deliveries: Annotated[int, Meta(ge=1)] | None = None
    max_deliveries_per_day: Annotated[int, Meta(ge=1)] | None = None


class Spacing(Base, frozen=True):
    """Project-wide: at most one campaign per user every `seconds` and every `page_views`."""

    seconds: Duration | None = None
    page_views: Annotated[int, Meta(ge=1)] | None = None


GOAL_WITHIN = 7 * 86400.0  # a goal's default window


class Goal(Base, frozen=True):
    """What a campaign's A/B results count as success: an event within a window of assignment."""

    event: Annotated[str, Meta(min_length=1)]
    within: Duration | None = None  # None: GOAL_WITHIN
    where: ConditionTree | None = None
    value: str | None = None  # a field of the goal event summed per user (properties.revenue)

    def window(self) -> float:
        """How long after a user's assignment the goal counts, in seconds."""
        return GOAL_WITHIN if self.within is None else float(self.within)


class WebhookAction(Base, frozen=True):
    """The HTTP request a campaign sends; strings may hold `#{name}` placeholders."""

    url: Annotated[str, Meta(min_length=1)]
    method: Method = "POST"
    headers: dict[str, str] = {}
    body: Any = None


class Action(Base, frozen=True):
    """What happens when a campaign fires."""

    webhook: WebhookAction


class Variant(Base, frozen=True):
    """One arm of an A/B test: its share of users and its own action."""

    id: Identifier
    rate: Rate
    action: Action


class CampaignSpec(Base, frozen=True):
    """A campaign (接客サービス): delivery conditions plus a webhook action."""

    id: Identifier
    name: str = ""
    status: CampaignStatus = "draft"
    schedule: Schedule | None = None
    target: Target = Target()
    trigger: Trigger | None = None
    frequency: Frequency | None = None  # None: once per session (DEFAULT_PER)
    stop: Stop = Stop()
    spacing: bool = True  # false: this campaign neither waits for nor restarts the spacing
    exclusive: bool = False
    priority: int = 0
    test_mode: bool = False
    rate: Rate = 100.0
    action: Action | None = None
    variants: list[Variant] | None = None
    goal: Goal | None = None


class RequestBinSettings(Base, frozen=True):
    """The built-in request bin (on in the demo, off in serve unless enabled)."""

    enabled: bool = False
    max_requests: Annotated[int, Meta(ge=1)] = 200


class IdentitySettings(Base, frozen=True):
    """Identity verification: which user ids the collector believes (see `ingest.verification`).

    With `secrets` set, a message claiming a user id through a public write key must carry
    `context.userHash`, the HMAC-SHA256 of the user id under one of them (computed by the
    site's server); `server_write_keys` are kept on servers, and the ids they send are believed.
    """

    secrets: list[str] = []  # several while rotating; none: off
    server_write_keys: list[str] = []


class StateSettings(Base, frozen=True):
    """Bounds on per-user state: how long, how many, and how many bytes a profile may take."""

    user_ttl: Duration = Duration(30 * 86400.0)
    max_users: Annotated[int, Meta(ge=1)] = 1_000_000
    recent_events: Annotated[int, Meta(ge=0, le=1000)] = 50
    # A recent event bigger than this (encoded) is kept without its context, then without its
    # properties and traits; a profile's recent events take at most recent_events times this.
    recent_event_bytes: Annotated[int, Meta(ge=256, le=1_048_576)] = 4096
    # A profile's traits, JSON-encoded: a trait that would take them past this is not kept.
    trait_bytes: Annotated[int, Meta(ge=256, le=16_777_216)] = 16_384
    max_timers: Annotated[int, Meta(ge=1, le=1000)] = 20  # pending absence-trigger waits per user
    # Memory mode: profiles held take at most about this many MB (measured as they grow).
    max_memory_mb: Annotated[int, Meta(ge=1)] | None = None


class ServerSettings(Base, frozen=True):
    """Deadlines and caps for client connections, so slow or idle clients cannot hold them."""

    header_timeout: Duration = Duration(10.0)  # request line and headers, from the first byte
    body_timeout: Duration = Duration(30.0)  # the body, from the end of the headers
    keep_alive_timeout: Duration = Duration(5.0)  # an idle connection between requests
    max_connections_per_client: Annotated[int, Meta(ge=0)] = 256  # per address; 0: no cap
    max_streams: Annotated[int, Meta(ge=1)] = 100  # live streams (admin events, request bin)


class ConfigFile(Base, frozen=True):
    """The whole `tripwire.yaml`."""

    write_keys: list[str] = []
    timezone: TimezoneName = TimezoneName("UTC")
    session_timeout: Duration = Duration(1800.0)
    allowed_origins: list[str] = msgspec.field(default_factory=lambda: ["*"])
    webhooks: WebhookSettings = WebhookSettings()
    test_users: ConditionTree | None = None
    variables: dict[str, VariableSpec] = {}
    segments: dict[str, ConditionTree] = {}
    spacing: Spacing = Spacing()
    campaigns: list[CampaignSpec] = []
    request_bin: RequestBinSettings = RequestBinSettings()
    identity: IdentitySettings = IdentitySettings()
    server: ServerSettings = ServerSettings()
    state: StateSettings = StateSettings()


# --- conditions -------------------------------------------------------------------------------

OperandKind = Literal["trait", "var", "prop", "context", "event_count", "segment"]
ValueOperator = Literal[
    "eq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "between",
    "in",
    "not_in",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "regex",
    "exists",
    "within",
    "older_than",
]
Operator = ValueOperator | Literal["member"]  # "member": a bare `segment: NAME`
OPERAND_KINDS: tuple[OperandKind, ...] = get_args(OperandKind)
VALUE_OPERATORS: tuple[ValueOperator, ...] = get_args(ValueOperator)
_KIND_OF: dict[str, OperandKind] = {kind: kind for kind in OPERAND_KINDS}
_OPERATOR_OF: dict[str, ValueOperator] = {op: op for op in VALUE_OPERATORS}


class Leaf(msgspec.Struct, frozen=True):
    """One comparison: an operand (`trait: plan`), an operator and the value to compare with."""

    kind: OperandKind
    name: str  # trait/var/segment name, property or context path, or event name
    op: Operator
    value: Any
    window: str = "all"  # for event_count


class All(msgspec.Struct, frozen=True):
    """True when every item is true."""

    items: tuple[Condition, ...]


class AnyOf(msgspec.Struct, frozen=True):
    """True when at least one item is true."""

    items: tuple[Condition, ...]


class Not(msgspec.Struct, frozen=True):
    """True when its item is false."""

    item: Condition


Condition = Leaf | All | AnyOf | Not


def parse_condition(raw: Any, path: str, errors: list[str]) -> Condition | None:
    """Parse a condition mapping into a tree, appending `path: message` for each mistake."""
    if not isinstance(raw, dict) or not raw:
        errors.append(f"{path}: expected a condition mapping, got {type(raw).__name__}")
        return None
    keys = set(raw)
    for combinator in ("all", "any"):
        if combinator in raw:
            if keys != {combinator}:
                errors.append(
                    f"{path}: '{combinator}' cannot be combined with {sorted(keys - {combinator})}"
                )
            items = raw[combinator]
            if not isinstance(items, list) or not items:
                errors.append(f"{path}.{combinator}: expected a non-empty list of conditions")
                return None
            parsed = [
                parse_condition(item, f"{path}.{combinator}[{i}]", errors)
                for i, item in enumerate(items)
            ]
            kept = tuple(p for p in parsed if p is not None)
            return All(kept) if combinator == "all" else AnyOf(kept)
    if "not" in raw:
        if keys != {"not"}:
            errors.append(f"{path}: 'not' cannot be combined with {sorted(keys - {'not'})}")
        inner = parse_condition(raw["not"], f"{path}.not", errors)
        return Not(inner) if inner is not None else None
    return _parse_leaf(raw, path, errors)


def _parse_leaf(raw: dict[str, Any], path: str, errors: list[str]) -> Leaf | None:
    kinds = [_KIND_OF[k] for k in raw if k in _KIND_OF]
    ops = [_OPERATOR_OF[k] for k in raw if k in _OPERATOR_OF]
    unknown = [k for k in raw if k not in _KIND_OF and k not in _OPERATOR_OF and k != "window"]
    start = len(errors)
    for key in unknown:
        errors.append(f"{path}: unknown operator '{key}'")
    if len(kinds) != 1:
        errors.append(f"{path}: expected exactly one operand of {', '.join(OPERAND_KINDS)}")
        return None
    kind = kinds[0]
    name = raw[kind]
    if not isinstance(name, str) or not name:
        errors.append(f"{path}.{kind}: expected a name")
        return None
    window = raw.get("window", "all")
    if "window" in raw and kind != "event_count":
        errors.append(f"{path}.window: only event_count takes a window")
    elif not isinstance(window, str) or not _WINDOW.match(window):
        errors.append(f"{path}.window: invalid window {window!r}")
    if kind == "segment" and not ops:
        return Leaf(kind, name, "member", True, window) if len(errors) == start else None
    if len(ops) != 1:
        if unknown and not ops:
            return None
        errors.append(f"{path}: expected exactly one operator, got {ops or 'none'}")
        return None
    op = ops[0]
    value = _check_value(op, raw[op], f"{path}.{op}", errors)
    if len(errors) != start:
        return None
    return Leaf(kind, name, op, value, window)


def _check_value(op: str, value: Any, path: str, errors: list[str]) -> Any:
    """The value of operator `op` checked against its shape (`registry.OPERATORS`)."""
    shape = OPERATORS[op].value
    if shape == "pair":
        if not (isinstance(value, list) and len(value) == 2):
            errors.append(f"{path}: expected [low, high]")
    elif shape == "list":
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list")
    elif shape == "scalar":
        if not isinstance(value, int | float | str):
            errors.append(f"{path}: expected a number or string")
    elif shape == "text":
        if not isinstance(value, str | int | float):
            errors.append(f"{path}: expected a string")
    elif shape == "pattern":
        if not isinstance(value, str):
            errors.append(f"{path}: expected a regular expression string")
            return value
        try:
            compile_pattern(value)
        except ValueError as exc:
            errors.append(f"{path}: {exc}")
    elif shape == "flag":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false")
    elif shape == "duration":
        try:
            return parse_duration(value)
        except ValueError as exc:
            errors.append(f"{path}: {exc}")
    return value


def parse_hours(hours: str) -> tuple[time, time]:
    """Split a validated `HH:MM-HH:MM` range into (start, end); 24:00 means end of day."""
    match = _HOURS.match(hours)
    assert match is not None
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    end = time(23, 59, 59, 999999) if h2 == 24 else time(h2, m2)
    return time(min(h1, 23), m1), end


def window_seconds(window: str) -> float | None:
    """Length of an `Nd`/`Nh` window in seconds, or None for named windows."""
    if window[-1] == "d" and window[:-1].isdigit():
        return int(window[:-1]) * 86400.0
    if window[-1] == "h" and window[:-1].isdigit():
        return int(window[:-1]) * 3600.0
    return None


def decode_hook(type_: type, value: Any) -> Any:
    """msgspec `dec_hook` for the config's own types: durations, timezones, conditions."""
    if type_ is Duration:
        return parse_duration(value)
    if type_ is TimezoneName:
        if not isinstance(value, str):
            raise ValueError("expected a timezone name such as Asia/Tokyo")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}") from None
        return TimezoneName(value)
    if type_ is Window:
        if not isinstance(value, str) or not _WINDOW.match(value):
            raise ValueError(
                f"invalid window {value!r} (use all, session, previous_session, today, Nd or Nh)"
            )
        return Window(value)
    if type_ is Hours:
        match = _HOURS.match(value) if isinstance(value, str) else None
        if match is None or any(
            h == "24" and m != "00" for h, m in (match.group(1, 2), match.group(3, 4))
        ):
            raise ValueError(f"invalid hours {value!r} (use HH:MM-HH:MM, e.g. 09:00-21:00)")
        return Hours(value)
    if type_ is ConditionTree:
        problems: list[str] = []
        root = parse_condition(value, "$", problems)
        if root is None or problems:
            raise ValueError("; ".join(problems))
        return ConditionTree(value, root)
    raise NotImplementedError(f"cannot decode {type_!r}")


def campaign_as_written(spec: CampaignSpec) -> dict[str, Any]:
    """A campaign as plain data, as it would be written in a config file: unset fields left out."""
    data: dict[str, Any] = _without_nulls(msgspec.to_builtins(spec, enc_hook=encode_hook))
    return data


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def encode_hook(value: Any) -> Any:
    """msgspec `enc_hook` giving back the config's own types as plain data."""
    if isinstance(value, ConditionTree):
        return value.raw
    if isinstance(value, Duration):
        return format_duration(value)
    if isinstance(value, str):  # the config's str types: hours, windows, timezone names
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value)!r}")
