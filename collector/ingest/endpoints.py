"""The ingest endpoints (`/v1/batch`, `/v1/track`, ...) as a plain ASGI app: the hot path.

It serves every path the Segment and RudderStack client libraries post to (`/v1/t`, `/v1/b`,
... of analytics.js; `/beacon/v1/batch?writeKey=` of RudderStack's beacon transport), reads
the body under the size limits, inflates gzip, checks the write key (body, HTTP Basic, or the
query string), decodes with the prebuilt decoders, refuses identities it cannot believe (when
identity verification is on, `collector.ingest.verification`), hands the events to the pipeline
and answers with orjson. It answers CORS preflights itself so browsers can send from any allowed
origin.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import parse_qs

import orjson
from starlette.types import Receive, Scope, Send

from collector.errors import (
    BadRequest,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from collector.events import Event
from collector.ingest.messages import (
    MAX_BATCH_BYTES,
    MESSAGE_TYPES,
    Decoded,
    Rejection,
    decode_batch,
    decode_single,
    raise_all_rejected,
)
from collector.ingest.verification import IdentityCheck, without_hashes
from collector.metrics import IngestMetrics

log = logging.getLogger("tripwire.ingest")

# Takes a request's events; returns those it could not apply, by position, with why.
Accept = Callable[[Sequence[Event], float], Awaitable[Sequence[tuple[int, str]]]]

_OK = orjson.dumps({"success": True})
_JSON_TYPES = (b"application/json", b"text/plain", b"")
_MAX_WIRE_BYTES = MAX_BATCH_BYTES * 2  # a body this big is refused before it is read in full


class IngestApp:
    """ASGI app for `/v1/*`: validates, authenticates and accepts Segment messages."""

    def __init__(
        self,
        write_keys: Sequence[str],
        allowed_origins: Sequence[str],
        accept: Accept,
        metrics: IngestMetrics,
        identity: IdentityCheck | None = None,
        server_write_keys: Sequence[str] = (),
    ) -> None:
        self._write_keys = frozenset([*write_keys, *server_write_keys])
        self._identity = identity if identity is not None and identity.on else None
        self._any_origin = "*" in allowed_origins
        self._origins = frozenset(allowed_origins)
        self._accept = accept
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request to an ingest endpoint."""
        cors = self._cors_headers(scope)
        method = scope["method"]
        if method == "OPTIONS":
            await _respond(send, 204, b"", [*cors, *_PREFLIGHT])
            return
        try:
            if method != "POST":
                raise MethodNotAllowed(f"{method} is not allowed; use POST")
            kind = _endpoint(scope["path"])
            headers = dict(scope["headers"])
            body = await _read_body(receive, headers)
            now = time.time()
            decoded = decode_batch(body, now) if kind == "batch" else decode_single(body, kind, now)
            key = self._authenticate(decoded, headers, scope.get("query_string", b""))
            if self._identity is not None and not self._identity.trusted(key):
                _verify(self._identity, decoded, kind == "batch")
            else:
                decoded.events = without_hashes(decoded.events)
            failed = await self._accept(decoded.events, now)
            if failed:
                _add_failures(decoded, failed, kind == "batch")
        except HTTPError as exc:
            self._metrics.requests[exc.status] += 1
            self._metrics.messages["rejected"] += 1
            payload = orjson.dumps(exc.payload())
            extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            await _respond(send, exc.status, payload, [*cors, *extra, _CONTENT_JSON])
            return
        self._metrics.requests[200] += 1
        if decoded.rejected:
            self._metrics.messages["rejected"] += len(decoded.rejected)
            payload = orjson.dumps(
                {
                    "success": True,
                    "rejected": [{"index": r.index, "detail": r.detail} for r in decoded.rejected],
                }
            )
        elif not cors:
            await _send_ok(send)
            return
        else:
            payload = _OK
        await _respond(send, 200, payload, [*cors, _CONTENT_JSON])

    def _authenticate(self, decoded: Decoded, headers: dict[bytes, bytes], query: bytes) -> str:
        key = (
            decoded.write_key
            or _basic_user(headers.get(b"authorization"))
            or _query_write_key(query)
        )
        if key is None:
            raise Unauthorized(
                "$.writeKey: missing write key (body writeKey, HTTP Basic user or ?writeKey=)"
            )
        if key not in self._write_keys:
            raise Unauthorized("$.writeKey: unknown write key")
        return key

    def _cors_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        origin = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
                break
        if origin is None:
            return []
        if self._any_origin:
            return [(b"access-control-allow-origin", b"*")]
        if origin.decode("latin-1") in self._origins:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        return [(b"vary", b"Origin")]


_CONTENT_JSON = (b"content-type", b"application/json")
_PREFLIGHT = [
    (b"access-control-allow-methods", b"POST, OPTIONS"),
    (b"access-control-allow-headers", b"Content-Type, Content-Encoding, Authorization"),
    (b"access-control-max-age", b"86400"),
]


# Every path a Segment or RudderStack client library posts to, as it sends it: the long forms,
# analytics.js's one-letter forms, and RudderStack's beacon (write key in the query string).
_SHORT_FORMS = {
    "b": "batch", "t": "track", "p": "page", "i": "identify", "a": "alias", "g": "group",
    "s": "screen",
}
_ENDPOINTS = {
    **{f"/v1/{kind}": kind for kind in ("batch", *MESSAGE_TYPES)},
    **{f"/v1/{short}": kind for short, kind in _SHORT_FORMS.items()},
    "/beacon/v1/batch": "batch",
}
INGEST_PREFIXES = ("/v1/", "/beacon/v1/")


def _verify(check: IdentityCheck, decoded: Decoded, batch: bool) -> None:
    """Keep the events whose identity can be believed; list the others as rejected."""
    events: list[Event] = []
    indexes: list[int] = []
    for event, index in zip(decoded.events, decoded.indexes, strict=True):
        event, problem = check.verify(event)
        if problem is None:
            events.append(event)
            indexes.append(index)
        else:
            path = f"$.batch[{index}]" if batch else "$"
            decoded.rejected.append(Rejection(index, path + problem))
    if len(events) == len(decoded.events):
        decoded.events = events  # the same, without their hashes
        return
    decoded.rejected.sort(key=lambda r: r.index)
    decoded.events, decoded.indexes = events, indexes
    if not events:
        raise_all_rejected(decoded.rejected)


def _add_failures(decoded: Decoded, failed: Sequence[tuple[int, str]], batch: bool) -> None:
    """List events the store could not apply among the rejected messages (all: a 400)."""
    for position, detail in failed:
        index = decoded.indexes[position]
        path = f"$.batch[{index}]" if batch else "$"
        decoded.rejected.append(Rejection(index, f"{path}: {detail}"))
    decoded.rejected.sort(key=lambda r: r.index)
    if len(failed) == len(decoded.events):
        raise_all_rejected(decoded.rejected)


def _endpoint(path: str) -> str:
    found = _ENDPOINTS.get(path)
    if found is not None:
        return found
    last = path.rstrip("/").rsplit("/", 1)[-1]
    kind = _SHORT_FORMS.get(last, last)
    if kind != "batch" and kind not in MESSAGE_TYPES:
        raise NotFound(f"{path}: no such endpoint")
    return kind


async def _read_body(receive: Receive, headers: dict[bytes, bytes]) -> bytes:
    content_type = headers.get(b"content-type", b"")
    if content_type not in _JSON_TYPES:  # exact common values need no parsing
        content_type = content_type.split(b";", 1)[0].strip().lower()
        if content_type not in _JSON_TYPES:
            raise UnsupportedMediaType(
                f"content-type {content_type.decode('latin-1')!r}: "
                "send application/json or text/plain"
            )
    encoding = headers.get(b"content-encoding", b"identity")
    if encoding != b"identity":
        encoding = encoding.strip().lower()
        if encoding not in (b"gzip", b"identity"):
            raise UnsupportedMediaType(
                f"content-encoding {encoding.decode('latin-1')!r}: send gzip or none"
            )
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > _MAX_WIRE_BYTES:
        raise PayloadTooLarge(f"$: body is {int(declared)} bytes; the limit is {MAX_BATCH_BYTES}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_WIRE_BYTES:
            raise PayloadTooLarge(f"$: body is over {MAX_BATCH_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if encoding == b"gzip":
        body = _gunzip(body)
    if not body:
        raise BadRequest("$: empty body")
    return body


def _gunzip(body: bytes) -> bytes:
    """Inflate a gzip body of one member or several (RFC 1952), at most MAX_BATCH_BYTES."""
    parts: list[bytes] = []
    size = 0
    rest = body
    while rest[:2] == b"\x1f\x8b" or not parts:  # past the last member: trailing bytes ignored
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(rest, MAX_BATCH_BYTES + 1 - size)  # never 0 (no limit)
        except zlib.error as exc:
            raise BadRequest(f"$: body is not valid gzip ({exc})") from exc
        size += len(data)
        if size > MAX_BATCH_BYTES:
            raise PayloadTooLarge(f"$: inflated body is over {MAX_BATCH_BYTES} bytes")
        if not inflater.eof:
            raise BadRequest("$: gzip body is truncated")
        parts.append(data)
        rest = inflater.unused_data
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _basic_user(header: bytes | None) -> str | None:
    if not header or header[:6].lower() != b"basic ":
        return None
    try:
        user, _, _ = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user or None


def _query_write_key(query: bytes) -> str | None:
    """The `writeKey` of a query string (RudderStack's beacon sends it there)."""
    if b"writeKey=" not in query:
        return None
    found = parse_qs(query.decode("latin-1")).get("writeKey")
    return found[0] if found and found[0] else None


_OK_HEADERS = (_CONTENT_JSON, (b"content-length", b"%d" % len(_OK)))


async def _send_ok(send: Send) -> None:
    """The plain `{"success": true}` answer (no CORS headers), its headers made once."""
    await send({"type": "http.response.start", "status": 200, "headers": [*_OK_HEADERS]})
    await send({"type": "http.response.body", "body": _OK})


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
