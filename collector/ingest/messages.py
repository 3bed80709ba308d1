"""The Segment wire format: decoding request bodies into accepted Events and rejections.

Decoders are built once. A batch is decoded in two steps — the envelope with each message kept
raw, then each message on its own — so one bad message is rejected with its own JSON path
(`$.batch[3].event: ...`) while the good ones in the same batch are kept.

Page fields: browser libraries (analytics.js, this project's tag) describe the page in
`context.page`, server libraries (`@segment/analytics-node`, analytics-python, ...) put `path`,
`url`, `title`, `referrer` and `search` in a page call's `properties` (the Segment spec's
reserved page properties). A page call's `context.page` is completed from its properties, and
`path`/`search` from its `url` when neither gives them, so `context: page.path` conditions,
`context.page.*` variables and `#{page.*}` placeholders see every library's page views alike.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec

from collector.errors import BadRequest, PayloadTooLarge
from collector.events import Event

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
MAX_DEPTH = 16

PAGE_FIELDS = ("path", "url", "title", "referrer", "search")
MESSAGE_TYPES = frozenset(("track", "page", "identify", "alias", "screen", "group"))
Id = str | int
Moment = datetime | float  # ISO-8601, or epoch seconds (or milliseconds, when above 1e11)


class Message(msgspec.Struct, kw_only=True):
    """One Segment message; unknown fields are tolerated, as the spec grows."""

    type: str | None = None
    messageId: Id | None = None
    anonymousId: Id | None = None
    userId: Id | None = None
    previousId: Id | None = None
    event: str | None = None
    name: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    timestamp: Moment | None = None
    originalTimestamp: Moment | None = None
    sentAt: Moment | None = None
    receivedAt: Moment | None = None  # in recorded events (replay)


class Envelope(msgspec.Struct, kw_only=True):
    """A `/v1/batch` body with its messages still raw."""

    batch: list[msgspec.Raw]
    writeKey: str | None = None
    sentAt: Moment | None = None
    context: dict[str, Any] | None = None


class Single(msgspec.Struct, kw_only=True):
    """Just the write key of a single-message body."""

    writeKey: str | None = None


class Rejection(msgspec.Struct):
    """A message of a batch that was not accepted, with the path of what was wrong."""

    index: int
    detail: str
    too_large: bool = False


_ENVELOPE = msgspec.json.Decoder(Envelope)
_MESSAGE = msgspec.json.Decoder(Message)
_SINGLE = msgspec.json.Decoder(Single)


class Decoded(msgspec.Struct):
    """What a request body held: its write key, accepted events and rejected messages."""

    write_key: str | None
    events: list[Event]
    rejected: list[Rejection]


def decode_batch(body: bytes, received_at: float) -> Decoded:
    """Decode a `/v1/batch` body; raise BadRequest when it holds no valid message."""
    if len(body) > MAX_BATCH_BYTES:
        raise PayloadTooLarge(f"$: batch is {len(body)} bytes; the limit is {MAX_BATCH_BYTES}")
    try:
        envelope = _ENVELOPE.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(_path_message(exc, "$")) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"$: body is not valid JSON ({exc})") from exc
    if len(envelope.batch) > MAX_BATCH_MESSAGES:
        raise PayloadTooLarge(
            f"$.batch: {len(envelope.batch)} messages; the limit is {MAX_BATCH_MESSAGES}"
        )
    if not envelope.batch:
        raise BadRequest("$.batch: empty batch")
    events: list[Event] = []
    rejected: list[Rejection] = []
    sent_at = envelope.sentAt
    context = envelope.context
    for index, raw in enumerate(envelope.batch):
        try:
            # Each detail starts with the message's path: given here as "", it is prefixed
            # only when a message is rejected rather than formatted for every message.
            events.append(_decode_message(raw, None, sent_at, context, received_at, ""))
        except (BadRequest, PayloadTooLarge) as exc:
            too_large = isinstance(exc, PayloadTooLarge)
            rejected.append(Rejection(index, f"$.batch[{index}]{exc.detail}", too_large))
    if not events:
        detail = "; ".join(r.detail for r in rejected[:5])
        raise PayloadTooLarge(detail) if all(r.too_large for r in rejected) else BadRequest(detail)
    return Decoded(envelope.writeKey, events, rejected)


def decode_single(body: bytes, type_: str, received_at: float) -> Decoded:
    """Decode a single-message body (`/v1/track` and friends), whose type comes from the path."""
    raw = msgspec.Raw(body)
    try:
        write_key = _SINGLE.decode(body).writeKey
    except msgspec.ValidationError as exc:
        raise BadRequest(_path_message(exc, "$")) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"$: body is not valid JSON ({exc})") from exc
    event = _decode_message(raw, type_, None, None, received_at, "$")
    return Decoded(write_key, [event], [])


def decode_recorded(line: bytes, path: str) -> list[Event]:
    """Decode one line of recorded events (a message or a batch) for replay.

    Each message's own time (timestamp, else originalTimestamp, sentAt, receivedAt) is taken as
    when it was received, so replaying a file always gives the same answer.
    """
    if b'"batch"' in line:
        try:
            envelope = _ENVELOPE.decode(line)
        except msgspec.ValidationError:
            pass  # a message that mentions "batch" somewhere inside it
        except msgspec.DecodeError as exc:
            raise BadRequest(f"{path}: not valid JSON ({exc})") from exc
        else:
            return [
                _decode_message(
                    raw, None, envelope.sentAt, envelope.context, None, f"{path}.batch[{i}]"
                )
                for i, raw in enumerate(envelope.batch)
            ]
    return [_decode_message(msgspec.Raw(line), None, None, None, None, path)]


def _decode_message(
    raw: msgspec.Raw,
    type_: str | None,
    batch_sent_at: Moment | None,
    batch_context: dict[str, Any] | None,
    received_at: float | None,
    path: str,
) -> Event:
    data = bytes(raw)
    if len(data) > MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(
            f"{path}: message is {len(data)} bytes; the limit is {MAX_MESSAGE_BYTES}"
        )
    # Cheap bound first: fewer opening brackets than the limit cannot nest deeper than it.
    if data.count(b"{") + data.count(b"[") > MAX_DEPTH and _depth(data) > MAX_DEPTH:
        raise BadRequest(f"{path}: nesting is deeper than {MAX_DEPTH}")
    try:
        message = _MESSAGE.decode(data)
    except msgspec.ValidationError as exc:
        raise BadRequest(_path_message(exc, path)) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"{path}: not valid JSON ({exc})") from exc
    kind = type_ or message.type
    if kind is None:
        raise BadRequest(f"{path}.type: required")
    if kind not in MESSAGE_TYPES:
        raise BadRequest(f"{path}.type: unknown type {kind!r}")
    if type_ is not None and message.type is not None and message.type != type_:
        raise BadRequest(f"{path}.type: {message.type!r} sent to the /v1/{type_} endpoint")
    anonymous_id = message.anonymousId
    if not isinstance(anonymous_id, str) or not anonymous_id:  # the common case needs no call
        anonymous_id = _text(anonymous_id)
    user_id = _text(message.userId)
    if not anonymous_id and not user_id:
        raise BadRequest(f"{path}.anonymousId: anonymousId or userId is required")
    if kind == "track":
        if not message.event:
            raise BadRequest(f"{path}.event: required for track")
        name = message.event
    else:
        name = kind
    previous_id = None if message.previousId is None else _text(message.previousId)
    if kind == "alias" and not previous_id:
        raise BadRequest(f"{path}.previousId: required for alias")
    properties = message.properties or {}
    if kind in ("page", "screen") and message.name is not None and "name" not in properties:
        properties = {**properties, "name": message.name}
    context = message.context if message.context is not None else (batch_context or {})
    if kind == "page":
        page = context.get("page")
        if page.__class__ is not dict or "path" not in page or "url" not in page:
            context = _with_page(context, properties)
    if received_at is None:
        recorded = _recorded_time(message)
        if recorded is None:
            raise BadRequest(f"{path}.timestamp: required in recorded events")
        timestamp = received_at = recorded
    else:
        timestamp = _corrected_time(message, batch_sent_at, received_at)
    return Event(
        type=kind,
        name=name,
        message_id=_text(message.messageId) or f"srv-{uuid.uuid4()}",
        anonymous_id=anonymous_id,
        user_id=user_id,
        previous_id=previous_id,
        properties=properties,
        traits=message.traits
        or (context.get("traits") if isinstance(context.get("traits"), dict) else None)
        or {},
        context=context,
        timestamp=timestamp,
        received_at=received_at,
    )


def _with_page(context: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    """`context` (copied, never changed) with `page` completed from the page call's properties."""
    page = context.get("page")
    page = dict(page) if isinstance(page, dict) else {}
    for field in PAGE_FIELDS:
        if field not in page and field in properties:
            page[field] = properties[field]
    url = page.get("url")
    if isinstance(url, str) and ("path" not in page or "search" not in page):
        try:
            parts = urlsplit(url)
        except ValueError:  # not a URL: nothing to derive
            parts = None
        if parts is not None:
            page.setdefault("path", parts.path or "/")
            page.setdefault("search", f"?{parts.query}" if parts.query else "")
    return {**context, "page": page} if page else context


def _corrected_time(message: Message, batch_sent_at: Moment | None, received_at: float) -> float:
    """Segment's skew correction: timestamp = receivedAt - (sentAt - originalTimestamp)."""
    original = _seconds(message.timestamp or message.originalTimestamp)
    if original is None:
        return received_at
    sent_at = _seconds(message.sentAt or batch_sent_at)
    if sent_at is None:
        return original
    return received_at - (sent_at - original)


def _recorded_time(message: Message) -> float | None:
    """When a recorded message happened, by the first time field it has."""
    for value in (message.timestamp, message.originalTimestamp, message.sentAt, message.receivedAt):
        if value is not None:
            return _seconds(value)
    return None


def _seconds(value: Moment | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return value / 1000.0 if value > 1e11 else float(value)


def _text(value: Id | None) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _depth(data: bytes) -> int:
    """Deepest nesting of JSON containers in `data`, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x7D, 0x5D):
            depth -= 1
    return deepest


def _path_message(exc: msgspec.ValidationError, prefix: str) -> str:
    """Rewrite msgspec's `... - at `$.x`` into `prefix.x: ...`."""
    message, _, where = str(exc).rpartition(" - at `")
    if not message:
        return f"{prefix}: {exc}"
    return f"{prefix}{where.rstrip('`')[1:]}: {message}"
