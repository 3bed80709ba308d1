"""What the campaign builder's pickers offer: names that exist, and the operators that fit.

Event names and their property names come from the events accepted lately (the live feed's
backlog) and the event counts of recently seen profiles; traits from the same profiles and
identify calls; variables and segments from the live config; built-ins from the templates.
Each name carries a type (number, string, boolean, time, list or any) so the condition
builder offers only the operators that fit it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from collector.admin.reach import profiles
from collector.config.schema import VariableSpec
from collector.engine.templates import BUILTINS, PAGE_FIELDS

if TYPE_CHECKING:
    from collector.runtime import Runtime

PROFILES_SAMPLED = 500
VOCABULARY_SECONDS = 0.2
MAX_NAMES = 200

OPERATORS: dict[str, list[str]] = {
    "number": ["eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in", "exists"],
    "string": ["eq", "ne", "contains", "not_contains", "starts_with", "ends_with", "in",
               "not_in", "regex", "exists"],
    "boolean": ["eq", "ne", "exists"],
    "time": ["within", "older_than", "exists"],
    "list": ["contains", "not_contains", "exists"],
    "any": ["eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in", "contains",
            "not_contains", "starts_with", "ends_with", "regex", "exists", "within",
            "older_than"],
    "count": ["eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in"],
}
OPERATOR_LABELS = {
    "eq": "is", "ne": "is not", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤",
    "between": "between", "in": "is one of", "not_in": "is none of", "contains": "contains",
    "not_contains": "does not contain", "starts_with": "starts with", "ends_with": "ends with",
    "regex": "matches regex", "exists": "exists", "within": "within the last",
    "older_than": "longer ago than",
}
STATS = ["count", "sum", "avg", "min", "max", "latest", "previous", "first", "distinct_count",
         "first_at", "last_at", "top", "mode", "last_unique"]
WINDOWS = ["all", "session", "previous_session", "today", "1h", "24h", "7d", "28d", "30d", "90d"]
CONTEXT_PATHS = [f"page.{f}" for f in PAGE_FIELDS] + [
    "userAgent", "locale", "timezone", "campaign.source", "campaign.medium", "campaign.name",
]


def type_of(value: Any) -> str:
    """The picker type of a seen value."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "any"


def variable_type(spec: VariableSpec) -> str:
    """What a variable holds, by its stat."""
    if spec.stat in ("count", "sum", "avg", "distinct_count"):
        return "number"
    if spec.stat in ("first_at", "last_at"):
        return "time"
    if spec.stat in ("top", "last_unique"):
        return "list"
    return "any"


async def vocabulary(runtime: Runtime) -> dict[str, Any]:
    """Everything the pickers offer, as plain data."""
    events: dict[str, dict[str, str]] = {"page": {}}
    traits: dict[str, str] = {}
    for event in reversed(list(runtime.events.recent)):
        if event.type == "track" and event.name:
            props = events.setdefault(event.name, {})
            for key, value in event.properties.items():
                props.setdefault(key, type_of(value))
        for key, value in event.traits.items():
            traits.setdefault(key, type_of(value))
    users: list[str] = []
    async for state, _ in profiles(runtime, VOCABULARY_SECONDS, PROFILES_SAMPLED):
        for name in state.event_counts:
            if len(events) < MAX_NAMES:
                events.setdefault(name, {})
        for key, value in state.traits.items():
            if len(traits) < MAX_NAMES:
                traits.setdefault(key, type_of(value))
        if len(users) < 50:
            users.append(state.user_id or state.key)
    for spec in runtime.config.campaigns:
        trigger = spec.trigger
        for named in (trigger.event, trigger.after) if trigger is not None else ():
            if named:
                events.setdefault(named, {})
    config = runtime.config
    variables = {name: {"type": variable_type(spec), "stat": spec.stat}
                 for name, spec in config.variables.items()}
    return {
        "events": {name: events[name] for name in sorted(events)},
        "traits": dict(sorted(traits.items())),
        "variables": variables,
        "segments": sorted(config.segments),
        "builtins": sorted(BUILTINS),
        "page": [f"page.{f}" for f in PAGE_FIELDS],
        "context": CONTEXT_PATHS,
        "operators": OPERATORS,
        "labels": OPERATOR_LABELS,
        "stats": STATS,
        "windows": WINDOWS,
        "users": users,
        "campaigns": [c.id for c in config.campaigns],
    }
