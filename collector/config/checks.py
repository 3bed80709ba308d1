"""Checking a config beyond its types: references between names, cycles, templates, rates,
identity secrets and limits, and whether a comparison fits what it compares; and warnings about
what is valid but probably not meant. Each problem names its path in the config.
"""

from __future__ import annotations

import ipaddress
import re
import typing
from typing import Any
from urllib.parse import urlsplit

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
    WebhookAction,
)
from collector.config.secrets import InvalidSecret, decode_secret


def join_path(path: str, key: str | int) -> str:
    """`campaigns` + 0 -> `campaigns[0]`; `trigger` + `where` -> `trigger.where`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


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
    where = join_path(path, "frequency")
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
        check_campaign(campaign, path, config, problems)


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


def check_campaign(
    campaign: CampaignSpec, path: str, config: ConfigFile, problems: list[str]
) -> None:
    if (campaign.action is None) == (campaign.variants is None):
        problems.append(f"{join_path(path, 'action')}: give exactly one of 'action' or 'variants'")
    if campaign.variants is not None:
        if not campaign.variants:
            problems.append(f"{join_path(path, 'variants')}: expected at least one variant")
        if sum(v.rate for v in campaign.variants) > 100:
            problems.append(f"{join_path(path, 'variants')}: rates add up to more than 100")
        ids = [v.id for v in campaign.variants]
        if len(set(ids)) != len(ids):
            problems.append(f"{join_path(path, 'variants')}: variant ids must be unique")
    for i, segment in enumerate(campaign.target.segments):
        if segment not in config.segments:
            where = f"{join_path(path, 'target.segments')}[{i}]"
            problems.append(f"{where}: unknown segment {segment!r}")
    trigger = campaign.trigger
    if trigger is not None:
        tpath = join_path(path, "trigger")
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
        actions.append((join_path(path, "action.webhook"), campaign.action))
    for index, variant in enumerate(campaign.variants or ()):
        actions.append((join_path(path, f"variants[{index}].action.webhook"), variant.action))
    for where, action in actions:
        _check_webhook(action.webhook, where, problems)
    schedule = campaign.schedule
    if (
        schedule
        and schedule.start
        and schedule.end
        and _aware(schedule.end) <= _aware(schedule.start)
    ):
        problems.append(f"{join_path(path, 'schedule.end')}: must be after start")


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
