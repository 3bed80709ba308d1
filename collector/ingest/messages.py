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

import re
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
MAX_ID_LENGTH = 512  # characters in a messageId, anonymousId, userId, previousId or event name
# Accepted times (timestamp, sentAt, and the skew-corrected time): from 1970 up to the year 3000.
MAX_EPOCH = 32_503_680_000.0
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # integers outside signed 64 bits are refused

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
    context: msgspec.Raw = msgspec.Raw(b"")  # checked like a message before it is decoded


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
_CONTEXT = msgspec.json.Decoder(dict[str, Any] | None)
_TOO_DEEP = f"nesting is deeper than {MAX_DEPTH} levels"
# A run of 19 digits is the only way JSON can spell an integer outside signed 64 bits; where
# the body has none (nearly always), no value needs checking. Found by mapping every digit to
# "0" and looking for nineteen of them: two C loops, far cheaper than a regex over the body.
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_NINETEEN_ZEROS = b"0" * 19


def _long_digits(data: bytes) -> bool:
    """True when `data` holds a run of 19 or more digits."""
    return _NINETEEN_ZEROS in data.translate(_DIGITS_AS_ZERO)

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class Decoded(msgspec.Struct):
    """What a request body held: its write key, accepted events and rejected messages."""

    write_key: str | None
    events: list[Event]
    rejected: list[Rejection]
    indexes: list[int]  # each event's index in the batch


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
    except RecursionError as exc:  # skipping an unknown field nested hundreds of levels deep
        raise BadRequest(f"$: {_TOO_DEEP}") from exc
    if len(envelope.batch) > MAX_BATCH_MESSAGES:
        raise PayloadTooLarge(
            f"$.batch: {len(envelope.batch)} messages; the limit is {MAX_BATCH_MESSAGES}"
        )
    if not envelope.batch:
        raise BadRequest("$.batch: empty batch")
    events: list[Event] = []
    indexes: list[int] = []
    rejected: list[Rejection] = []
    check_numbers = _long_digits(body)
    sent_at = envelope.sentAt
    if sent_at is not None:
        _seconds(sent_at, "$", ".sentAt")
    context = _decode_context(envelope.context, check_numbers)
    for index, raw in enumerate(envelope.batch):
        try:
            # Each detail starts with the message's path: given here as "", it is prefixed
            # only when a message is rejected rather than formatted for every message.
            events.append(
                _decode_message(raw, None, sent_at, context, received_at, "", check_numbers)
            )
            indexes.append(index)
        except (BadRequest, PayloadTooLarge) as exc:
            too_large = isinstance(exc, PayloadTooLarge)
            rejected.append(Rejection(index, f"$.batch[{index}]{exc.detail}", too_large))
    if not events:
        raise_all_rejected(rejected)
    return Decoded(envelope.writeKey, events, rejected, indexes)


def raise_all_rejected(rejected: list[Rejection]) -> None:
    """Refuse a request none of whose messages was accepted, naming the first few problems."""
    detail = "; ".join(r.detail for r in rejected[:5])
    raise PayloadTooLarge(detail) if all(r.too_large for r in rejected) else BadRequest(detail)


def decode_single(body: bytes, type_: str, received_at: float) -> Decoded:
    """Decode a single-message body (`/v1/track` and friends), whose type comes from the path."""
    raw = msgspec.Raw(body)
    _check_shape(body, "$")
    try:
        write_key = _SINGLE.decode(body).writeKey
    except msgspec.ValidationError as exc:
        raise BadRequest(_path_message(exc, "$")) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"$: body is not valid JSON ({exc})") from exc
    check_numbers = _long_digits(body)
    event = _decode_message(raw, type_, None, None, received_at, "$", check_numbers)
    return Decoded(write_key, [event], [], [0])


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
        except RecursionError as exc:
            raise BadRequest(f"{path}: {_TOO_DEEP}") from exc
        else:
            context = _decode_context(envelope.context, True, f"{path}.context")
            return [
                _decode_message(
                    raw, None, envelope.sentAt, context, None, f"{path}.batch[{i}]", True
                )
                for i, raw in enumerate(envelope.batch)
            ]
    return [_decode_message(msgspec.Raw(line), None, None, None, None, path, True)]


def _decode_context(
    raw: msgspec.Raw, check_numbers: bool, path: str = "$.context"
) -> dict[str, Any] | None:
    """A batch's shared context, held to the same limits as a message."""
    data = bytes(raw)
    if not data:
        return None
    _check_shape(data, path)
    try:
        context = _CONTEXT.decode(data)
    except msgspec.ValidationError as exc:
        raise BadRequest(_path_message(exc, path)) from exc
    if check_numbers and context:
        _check_numbers(context, path)
    return context


def _check_shape(data: bytes, path: str) -> None:
    """Refuse a message over the size limit or nested deeper than MAX_DEPTH, before parsing."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(
            f"{path}: message is {len(data)} bytes; the limit is {MAX_MESSAGE_BYTES}"
        )
    # Cheap bound first: fewer opening brackets than the limit cannot nest deeper than it.
    if data.count(b"{") + data.count(b"[") > MAX_DEPTH and _too_deep(data, MAX_DEPTH):
        raise BadRequest(f"{path}: {_TOO_DEEP}")


def _check_numbers(value: Any, path: str) -> None:
    """Refuse integers outside signed 64 bits, naming where the first one is."""
    cls = value.__class__
    if cls is int:
        if not INT_MIN <= value <= INT_MAX:
            raise BadRequest(f"{path}: integer out of range (signed 64 bits)")
    elif cls is dict:
        for key, item in value.items():
            _check_numbers(item, f"{path}.{key}")
    elif cls is list:
        for i, item in enumerate(value):
            _check_numbers(item, f"{path}[{i}]")


def _decode_message(
    raw: msgspec.Raw,
    type_: str | None,
    batch_sent_at: Moment | None,
    batch_context: dict[str, Any] | None,
    received_at: float | None,
    path: str,
    check_numbers: bool,
) -> Event:
    data = bytes(raw)
    _check_shape(data, path)
    try:
        message = _MESSAGE.decode(data)
    except msgspec.ValidationError as exc:
        raise BadRequest(_path_message(exc, path)) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"{path}: not valid JSON ({exc})") from exc
    if check_numbers and _long_digits(data):
        for field in ("messageId", "anonymousId", "userId", "previousId"):
            _check_numbers(getattr(message, field), f"{path}.{field}")
        for field in ("properties", "traits", "context"):
            if getattr(message, field):
                _check_numbers(getattr(message, field), f"{path}.{field}")
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
        if len(name) > MAX_ID_LENGTH:
            raise BadRequest(f"{path}.event: longer than {MAX_ID_LENGTH} characters")
    else:
        name = kind
    previous_id = None if message.previousId is None else _text(message.previousId)
    if kind == "alias" and not previous_id:
        raise BadRequest(f"{path}.previousId: required for alias")
    message_id = _text(message.messageId)
    ids = (anonymous_id, user_id, previous_id, message_id)
    if max(map(len, filter(None, ids))) > MAX_ID_LENGTH:  # one of them is set (checked above)
        _refuse_long_id(path, ids)
    properties = message.properties or {}
    if kind in ("page", "screen") and message.name is not None and "name" not in properties:
        properties = {**properties, "name": message.name}
    context = message.context if message.context is not None else (batch_context or {})
    if kind == "page":
        page = context.get("page")
        if page.__class__ is not dict or "path" not in page or "url" not in page:
            context = _with_page(context, properties)
    if received_at is None:
        recorded = _recorded_time(message, path)
        if recorded is None:
            raise BadRequest(f"{path}.timestamp: required in recorded events")
        timestamp = received_at = recorded
    else:
        timestamp = _corrected_time(message, batch_sent_at, received_at, path)
    return Event(
        type=kind,
        name=name,
        message_id=message_id or f"srv-{uuid.uuid4()}",
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


def _refuse_long_id(path: str, ids: tuple[str | None, ...]) -> None:
    """BadRequest naming the first id longer than MAX_ID_LENGTH."""
    for field, value in zip(("anonymousId", "userId", "previousId", "messageId"), ids, strict=True):
        if value is not None and len(value) > MAX_ID_LENGTH:
            raise BadRequest(f"{path}.{field}: longer than {MAX_ID_LENGTH} characters")


def _corrected_time(
    message: Message, batch_sent_at: Moment | None, received_at: float, path: str
) -> float:
    """Segment's skew correction: timestamp = receivedAt - (sentAt - originalTimestamp)."""
    if message.timestamp is not None:
        original = _seconds(message.timestamp, path, ".timestamp")
    elif message.originalTimestamp is not None:
        original = _seconds(message.originalTimestamp, path, ".originalTimestamp")
    else:
        return received_at
    if message.sentAt is not None:
        sent_at = _seconds(message.sentAt, path, ".sentAt")
    elif batch_sent_at is not None:
        sent_at = _seconds(batch_sent_at, "$", ".sentAt")
    else:
        return original
    corrected = received_at - (sent_at - original)
    if not 0.0 <= corrected <= MAX_EPOCH:
        raise BadRequest(
            f"{path}.sentAt: correcting the timestamp by sentAt puts it before 1970 or after 3000"
        )
    return corrected


def _recorded_time(message: Message, path: str) -> float | None:
    """When a recorded message happened, by the first time field it has."""
    for field in ("timestamp", "originalTimestamp", "sentAt", "receivedAt"):
        value = getattr(message, field)
        if value is not None:
            return _seconds(value, path, f".{field}")
    return None


def _seconds(value: Moment, path: str, field: str) -> float:
    """Epoch seconds of a time field; a time before 1970 or after the year 3000 is refused.

    The path comes in two parts so that it is only joined for a refusal.
    """
    if isinstance(value, datetime):
        seconds = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    else:
        seconds = value / 1000.0 if value > 1e11 else float(value)
    if not 0.0 <= seconds <= MAX_EPOCH:
        raise BadRequest(f"{path}{field}: time out of range (1970 to 3000)")
    return seconds


def _text(value: Id | None) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _too_deep(data: bytes, limit: int) -> bool:
    """True when JSON containers in `data` nest deeper than `limit` (brackets in strings aside).

    Without recursion and in C loops: strings are removed, then only brackets kept, then each
    pass removes the innermost pairs; what is left after `limit` passes nests deeper (or is
    unbalanced, which the decoder refuses anyway).
    """
    brackets = _STRING.sub(b"", data).translate(_SQUARE, _NOT_BRACKETS)
    for _ in range(limit):
        brackets = brackets.replace(b"[]", b"")
        if not brackets:
            return False
    return True


def _path_message(exc: msgspec.ValidationError, prefix: str) -> str:
    """Rewrite msgspec's `... - at `$.x`` into `prefix.x: ...`."""
    message, _, where = str(exc).rpartition(" - at `")
    if not message:
        return f"{prefix}: {exc}"
    return f"{prefix}{where.rstrip('`')[1:]}: {message}"
