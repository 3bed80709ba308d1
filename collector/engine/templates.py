"""Webhook templates: `#{name}` placeholders in the URL, header values and body, compiled once.

Names resolve at load time, so a typo is a config error with its path:

- a user variable, by its bare name (its `default` applies when it has no value);
- built-ins: `user_id visitor_id campaign_id campaign_name variant_id event event_id
  delivery_id timestamp session_id` (`delivery_id` is the webhook id, `timestamp` the event's
  time in ISO-8601 UTC, `variant_id` is empty for a campaign without variants);
- `traits.X`, `properties.X`, `context.X` (dotted paths), and `page.path|url|title|referrer|search`
  (from the event's `context.page`, else the user's latest page);
- `traits` and `properties` alone: the user's traits and the event's properties, whole.

Rendering: in the URL a value is URL-encoded (a value `.` or `..` has its dots encoded too, so
it cannot move the path); in header values it is inserted as text, and a rendered value holding
a control character (CR, LF, NUL or any other but tab: HTTP allows none of them in a field
value, and receivers refuse the request) suppresses the delivery (`invalid_header`); in the
body, strings are rendered through dicts and lists, and a string that is exactly one
placeholder keeps the value's JSON type. Text forms: strings as they are, `true`/`false`,
numbers as Python prints them, lists and dicts as JSON. `#{name|fallback}` gives a fallback for
a missing (absent or null) value; as a whole body string, a fallback that reads as a JSON
number, `true`, `false` or `null` keeps that type. A missing value with neither fallback nor
default suppresses the delivery (`missing_variable`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote

import msgspec

from collector.config.schema import PLACEHOLDER, WebhookAction
from collector.engine.profile import session_id
from collector.engine.scope import Getter, Scope, TextGetter, path_getter
from collector.engine.values import MISSING, Missing, Value

PAGE_FIELDS = ("path", "url", "title", "referrer", "search")
_TIMESTAMP_MEMO = "\x00timestamp"  # a key no variable can clash with in the per-event memo

# What HTTP does not allow in a field value: every control character but horizontal tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Suppressed(Exception):
    """Rendering found a reason not to send: `missing_variable` or `invalid_header`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def text(value: Value) -> str:
    """A value as text inside a string: strings as is, JSON for the rest."""
    cls = value.__class__
    if cls is str:
        return value  # type: ignore[no-any-return]  # checked by class just above
    if cls is bool:
        return "true" if value else "false"
    if cls is int or cls is float:
        return str(value)
    return msgspec.json.encode(value).decode()


def _timestamp(scope: Scope) -> str:
    values = scope.values
    found = values.get(_TIMESTAMP_MEMO)
    if found is None:  # rendered once per event, however many webhooks use it
        moment = datetime.fromtimestamp(scope.event.timestamp, UTC)
        found = values[_TIMESTAMP_MEMO] = moment.isoformat(timespec="milliseconds")[:-6] + "Z"
    return found  # type: ignore[return-value]  # only this function writes this memo: a str


def _visitor_id(scope: Scope) -> str | Missing:
    if scope.event.anonymous_id is not None:
        return scope.event.anonymous_id
    ids = scope.state.anonymous
    return ids[-1] if ids else MISSING


def _session_id(scope: Scope) -> str | Missing:
    state = scope.state
    return MISSING if state.session is None else session_id(state.key, state.session)


BUILTINS: dict[str, Getter] = {
    "user_id": lambda scope: scope.state.user_id,
    "visitor_id": _visitor_id,
    "campaign_id": lambda scope: scope.campaign_id,
    "campaign_name": lambda scope: scope.campaign_name,
    "variant_id": lambda scope: scope.variant_id or "",
    "event": lambda scope: scope.event.name,
    "event_id": lambda scope: scope.event.message_id,
    "delivery_id": lambda scope: scope.delivery_id,
    "timestamp": _timestamp,
    "session_id": _session_id,
}


def _page_getter(field: str) -> Getter:
    def get(scope: Scope) -> Value | Missing:
        page = scope.event.context.get("page")
        if page.__class__ is dict:
            value = page.get(field)
            if value is not None:
                return value
        latest = scope.state.page
        return latest.get(field, MISSING) if latest is not None else MISSING

    return get


def _traits(scope: Scope) -> Value:
    return scope.state.traits


def _properties(scope: Scope) -> Value:
    return scope.event.properties


# Whole objects: `"#{traits}"` alone in a body string sends every trait as a JSON object.
WHOLE: dict[str, Getter] = {"traits": _traits, "properties": _properties}


def builtin_getter(name: str) -> Getter | None:
    """A reader for a built-in or prefixed name (`traits.plan`), or None if it is not one."""
    if name in BUILTINS:
        return BUILTINS[name]
    if name in WHOLE:
        return WHOLE[name]
    prefix, _, rest = name.partition(".")
    if not rest:
        return None
    if prefix == "page":
        return _page_getter(rest) if rest in PAGE_FIELDS else None
    get = path_getter(rest)
    if prefix == "traits":
        return lambda scope: get(scope.state.traits)
    if prefix == "properties":
        return lambda scope: get(scope.event.properties)
    if prefix == "context":
        return lambda scope: get(scope.event.context)
    return None


_JSON_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def _fallback_value(fallback: str) -> Value:
    if fallback in ("true", "false", "null") or _JSON_NUMBER.fullmatch(fallback):
        return msgspec.json.decode(fallback)
    return fallback


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


_URL_CACHE_SIZE = 4096


def url_encoder(cache: dict[str, str]) -> Callable[[Value], str]:
    """A value-to-URL-encoded-text function remembering recent texts in `cache` (bounded)."""

    def encode(value: Value) -> str:
        rendered = value if value.__class__ is str else text(value)
        found = cache.get(rendered)
        if found is None:
            found = rendered if _URL_SAFE(rendered) else quote(rendered, safe="")
            if found == "." or found == "..":  # as a whole path segment, it would move the path
                found = found.replace(".", "%2E")
            if len(cache) >= _URL_CACHE_SIZE:
                cache.clear()
            cache[rendered] = found
        return found

    return encode


def _escape_braces(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


class TemplateCompiler:
    """Compiles one action's templates, resolving names and collecting problems with paths."""

    def __init__(
        self,
        variable: Callable[[str], Getter | None],
        problems: list[str],
        url_cache: dict[str, str] | None = None,
    ) -> None:
        self._variable = variable
        self._problems = problems
        self._encode = url_encoder({} if url_cache is None else url_cache)
        self.uses_page = False

    def action(self, action: WebhookAction, path: str) -> ActionTemplate:
        """Compile an action's URL, headers and body."""
        url = self._string(action.url, f"{path}.url", encode=True)
        headers: list[tuple[str, str | TextGetter]] = []
        for name, value in action.headers.items():
            hpath = f"{path}.headers.{name}"
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                self._problems.append(f"{hpath}: header names and values cannot hold CR or LF")
            elif _CONTROL.search(name) or _CONTROL.search(value):
                self._problems.append(
                    f"{hpath}: header names and values cannot hold control characters"
                )
            headers.append((name, self._string(value, hpath, encode=False)))
        body = self._body(action.body, f"{path}.body")
        return ActionTemplate(action.method, url, tuple(headers), body)

    def _lookup(self, name: str, path: str) -> Getter | None:
        """The reader of a placeholder's name, or None (a problem is noted) if it is unknown."""
        getter = self._variable(name) if name else None
        if getter is None and name:
            getter = builtin_getter(name)
            self.uses_page = self.uses_page or name.startswith("page.")
        if getter is None:
            shown = f"unknown variable '{name}'" if name else "empty placeholder '#{}'"
            self._problems.append(f"{path}: {shown}")
        return getter

    def _slot(self, name: str, has_fallback: bool, fallback: Value, path: str) -> Getter:
        """A reader of one placeholder's value (a whole-value body placeholder)."""
        name = name.strip()
        found = self._lookup(name, path)
        if found is None:
            return lambda scope: ""
        if has_fallback:
            return lambda scope: (
                fallback if (value := found(scope)) is MISSING or value is None else value
            )

        def required(scope: Scope) -> Value:
            value = found(scope)
            if value is MISSING or value is None:
                raise Suppressed("missing_variable", name)
            return value

        return required

    def _text_slot(
        self, name: str, has_fallback: bool, fallback: str, path: str,
        convert: Callable[[Value], str],
    ) -> TextGetter:
        """A reader of one placeholder inside a string, converted to (URL-encoded) text."""
        name = name.strip()
        found = self._lookup(name, path)
        if found is None:
            return lambda scope: ""
        if has_fallback:
            converted = convert(fallback)
            return lambda scope: (
                converted if (value := found(scope)) is MISSING or value is None else convert(value)
            )
        if convert is text:

            def required_text(scope: Scope) -> str:
                value = found(scope)
                if value.__class__ is str:
                    return value
                if value is MISSING or value is None:
                    raise Suppressed("missing_variable", name)
                return text(value)

            return required_text

        def required_converted(scope: Scope) -> str:
            value = found(scope)
            if value is MISSING or value is None:
                raise Suppressed("missing_variable", name)
            return convert(value)

        return required_converted

    def _string(self, template: str, path: str, *, encode: bool) -> str | TextGetter:
        literal: list[str] = []  # the template as a str.format pattern, one {} per placeholder
        slots: list[TextGetter] = []
        position = 0
        for match in PLACEHOLDER.finditer(template):
            literal.append(_escape_braces(template[position : match.start()]))
            literal.append("{}")
            name, bar, fallback = match.group(1).partition("|")
            convert = self._encode if encode else text
            slots.append(self._text_slot(name, bool(bar), fallback, path, convert))
            position = match.end()
        if not slots:
            return template
        literal.append(_escape_braces(template[position:]))
        pattern = "".join(literal).format
        if len(slots) == 1:
            (only,) = slots
            return lambda scope: pattern(only(scope))
        frozen = tuple(slots)
        return lambda scope: pattern(*[slot(scope) for slot in frozen])

    def _body(self, value: Value, path: str) -> Getter:
        if isinstance(value, str):
            match = PLACEHOLDER.fullmatch(value)
            if match is not None:
                name, bar, fallback = match.group(1).partition("|")
                return self._slot(name, bool(bar), _fallback_value(fallback), path)
            rendered = self._string(value, path, encode=False)
            if isinstance(rendered, str):
                return lambda scope: rendered
            return rendered
        if isinstance(value, dict):
            items = tuple((key, self._body(item, f"{path}.{key}")) for key, item in value.items())
            return lambda scope: {key: get(scope) for key, get in items}
        if isinstance(value, list):
            parts = tuple(self._body(item, f"{path}[{i}]") for i, item in enumerate(value))
            return lambda scope: [get(scope) for get in parts]
        return lambda scope: value


class ActionTemplate:
    """A compiled webhook action: render it for a scope to get (url, headers, body)."""

    __slots__ = ("body", "headers", "method", "url")

    def __init__(
        self,
        method: str,
        url: str | TextGetter,
        headers: tuple[tuple[str, str | TextGetter], ...],
        body: Getter,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body

    def render(self, scope: Scope) -> tuple[str, dict[str, str], Value]:
        """The request's URL, headers and body; raises Suppressed when it must not be sent."""
        url = self.url if isinstance(self.url, str) else self.url(scope)
        headers: dict[str, str] = {}
        for name, value in self.headers:
            if isinstance(value, str):
                headers[name] = value
                continue
            rendered = value(scope)
            if _CONTROL.search(rendered):
                raise Suppressed("invalid_header", name)
            headers[name] = rendered
        return url, headers, self.body(scope)
