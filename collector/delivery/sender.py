"""One webhook attempt over HTTP: shape the request, sign it, send it through the SSRF guard.

This module, `transport` and `http11` are the only ones that import httpx and httpcore. Attempts
go over HTTP/1.1 connections kept alive per endpoint (`http11`: the request written as bytes,
the answer parsed by llhttp): at most `connections_per_endpoint` idle ones each, the most
recently used taken first. A client's auth, redirect and cookie handling has no work here
(redirects are not followed), and the dispatcher already bounds the attempts in flight per
endpoint, so a connection pool's bookkeeping (a lock, a scan of every connection, a wrapper
stream, per request) is not needed either: an attempt takes an idle connection or opens one,
and puts it back when its response is read. Connections are dialled through
`transport.GuardedBackend` (an httpcore network backend), which connects only to addresses the
SSRF guard checked, while the URL keeps its host name: the `Host` header, TLS SNI, certificate
checks and the endpoints (keyed by host name) all stay right. One deadline bounds an attempt:
each wait for the network is given what is left of it (no timeout scope per attempt).

Request shape: GET merges the body (an object) into the URL's query, body keys replacing
same-named URL keys; other methods send the body as JSON with `Content-Type: application/json`
unless the campaign's headers set one. A request without a body signs its request target (see
`signing`). Campaign headers cannot override framing headers (Host, Content-Length, ...) or
the `webhook-*` signature headers.

    sender = Sender(signer=Signer(secrets), guard=Guard(policy), timeout=10.0)
    result = await sender.send(request)      # AttemptResult; never raises for the target's faults
    await sender.aclose()
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import re
import ssl
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, Literal, NamedTuple
from urllib.parse import urlsplit

import httpcore
import httpx
import msgspec
import orjson

from collector import __version__
from collector.delivery.bounded import content_codings, read_prefix
from collector.delivery.http11 import Connection, ProtocolError, Response
from collector.delivery.signing import Signer, signed_payload
from collector.delivery.ssrf import Guard, TargetRefused
from collector.delivery.transport import GuardedBackend
from collector.webhook import WebhookRequest

USER_AGENT: Final = f"Tripwire/{__version__}"
RESPONSE_PREFIX: Final = 4096
_DRAIN_LIMIT: Final = 65536  # read this much of a response at most, so its connection is reused
_URL_CACHE_SIZE: Final = 1024
_ENDPOINT_LIMIT: Final = 256  # endpoints kept past a sweep (the least recently used go first)
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})  # sent with Content-Length: 0 if empty
_TRANSPORT_ERRORS: Final = (httpcore.NetworkError, httpcore.ProtocolError, ProtocolError)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")
_CONTROL = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")  # besides CR, LF, NUL (and tab)
# Set by delivery itself: framing headers could smuggle requests, webhook-* must stay genuine.
_RESERVED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)

Outcome = Literal["delivered", "retry", "failed", "refused", "gone"]


class InvalidRequest(ValueError):
    """The rendered webhook cannot be sent as it is (bad URL, header or body)."""


class AttemptResult(msgspec.Struct, frozen=True, kw_only=True):
    """How one attempt ended, as delivery needs to know it."""

    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    response: str | None = None  # first 4 KB of the body
    latency_ms: float | None = None
    retry_after: float | None = None  # seconds the receiver asked us to wait


def shape(url: httpx.URL, request: WebhookRequest) -> tuple[httpx.URL, bytes]:
    """The URL and body a webhook is sent with: GET merges the body into the query, other
    methods send it as JSON; raises InvalidRequest."""
    body = request.body
    content = b""
    if request.method.upper() == "GET":
        if isinstance(body, dict):
            if body:
                params = {str(k): _query_value(v) for k, v in body.items()}
                url = url.copy_merge_params(params)
        elif body is not None:
            raise InvalidRequest("a GET webhook's body must be a JSON object")
    elif body is not None:
        try:
            content = orjson.dumps(body)
        except TypeError as exc:
            raise InvalidRequest(f"body is not JSON-serialisable: {exc}") from exc
    return url, content


def as_sent(request: WebhookRequest) -> tuple[str, str, bytes]:
    """Method, URL and body as a webhook would go on the wire (before signing); raises
    InvalidRequest."""
    try:
        url = httpx.URL(request.url)
    except httpx.InvalidURL as exc:
        raise InvalidRequest(f"invalid URL: {exc}") from exc
    url, content = shape(url, request)
    return request.method.upper(), str(url), content


@functools.lru_cache(maxsize=1024)  # campaigns reuse a few URLs
def endpoint_of(url: str) -> str:
    """Return the endpoint a URL belongs to (scheme://host:port), for isolation and pauses."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"invalid URL: {exc}") from exc
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in ("http", "https") or not host:
        raise InvalidRequest("URL must be http(s) with a host")
    port = port or (443 if scheme == "https" else 80)
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _query_value(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return [v if isinstance(v, str) else orjson.dumps(v).decode() for v in value]
    return orjson.dumps(value).decode()


class _Url(NamedTuple):
    """A webhook URL as httpx parses it, with what a request to it carries (built once)."""

    url: httpx.URL
    target: bytes  # the request target: path and query, percent-encoded
    origin: tuple[bytes, bytes, int]  # the endpoint: scheme, host, port
    host: bytes  # the Host header

    @classmethod
    def of(cls, url: httpx.URL) -> _Url:
        """Build the request parts of a parsed URL."""
        scheme = url.raw_scheme
        port = url.port or (443 if scheme == b"https" else 80)
        return cls(url, url.raw_path, (scheme, url.raw_host, port), url.netloc)


class _Endpoint:
    """One endpoint's idle connections and when it was last used."""

    __slots__ = ("active", "idle", "origin", "used_at")

    def __init__(self, origin: tuple[bytes, bytes, int]) -> None:
        self.origin = origin
        self.idle: list[Connection] = []  # the last one used is last
        self.active = 0  # attempts in flight
        self.used_at = 0.0  # event-loop time the last attempt ended

    async def aclose(self) -> None:
        """Close the idle connections."""
        idle, self.idle = self.idle, []
        for connection in idle:
            await connection.aclose()


class Sender:
    """Sends single attempts over connections kept alive per endpoint."""

    def __init__(
        self,
        *,
        signer: Signer,
        guard: Guard,
        timeout: float,
        clock: Callable[[], float] = time.time,
        connections_per_endpoint: int = 8,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._signer = signer
        self._timeout = timeout
        self._clock = clock
        self._urls: dict[str, _Url] = {}  # parsed URLs; campaigns reuse a few
        self._keepalive = max(1, connections_per_endpoint)
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context or httpx.create_ssl_context(trust_env=False)
        self._ssl_context.set_alpn_protocols(["http/1.1"])
        self._backend = network_backend or GuardedBackend(guard)
        self._endpoints: OrderedDict[tuple[bytes, bytes, int], _Endpoint] = OrderedDict()
        self._next_sweep = 0.0

    async def aclose(self) -> None:
        """Close pooled connections."""
        endpoints = list(self._endpoints.values())
        self._endpoints.clear()
        for endpoint in endpoints:
            await endpoint.aclose()

    def prepare(self, request: WebhookRequest) -> tuple[_Url, bytes, dict[str, str]]:
        """Return URL, body and headers (unsigned) for a webhook; raise InvalidRequest."""
        parsed = self._parse_url(request.url)
        url, content = shape(parsed.url, request)
        headers = {"user-agent": USER_AGENT, "accept": "*/*"}
        for name, value in request.headers.items():
            if not _TOKEN.fullmatch(name):
                raise InvalidRequest(f"invalid header name {name!r}")
            if _FORBIDDEN_IN_VALUE.search(value):
                raise InvalidRequest(f"header {name!r} contains CR, LF or NUL")
            if _CONTROL.search(value):
                raise InvalidRequest(f"header {name!r} contains a control character")
            lower = name.lower()
            if lower not in _RESERVED:
                headers[lower] = value
        if content and "content-type" not in headers:
            headers["content-type"] = "application/json"
        return parsed if url is parsed.url else _Url.of(url), content, headers

    def _parse_url(self, text: str) -> _Url:
        parsed = self._urls.get(text)
        if parsed is not None:
            return parsed
        try:
            url = httpx.URL(text)
        except httpx.InvalidURL as exc:
            raise InvalidRequest(f"invalid URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise InvalidRequest("URL must be http(s) with a host")
        if len(self._urls) >= _URL_CACHE_SIZE:
            self._urls.clear()
        parsed = self._urls[text] = _Url.of(url)
        return parsed

    async def send(self, request: WebhookRequest) -> AttemptResult:
        """Make one signed attempt and classify how it ended."""
        try:
            url, content, headers = self.prepare(request)
        except InvalidRequest as exc:
            return AttemptResult(outcome="failed", error=str(exc))
        signed = signed_payload(url.url.raw_path, content)
        headers.update(self._signer.headers(request.webhook_id, int(self._clock()), signed))
        message = _request_bytes(request.method.upper(), url, headers, content)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._next_sweep:
            await self._sweep(now)
        endpoint = self._endpoint(url.origin)
        endpoint.active += 1
        try:
            return await self._exchange(endpoint, message, now + self._timeout)
        finally:
            endpoint.active -= 1
            endpoint.used_at = loop.time()

    async def _exchange(
        self, endpoint: _Endpoint, message: bytes, deadline: float
    ) -> AttemptResult:
        started = time.perf_counter()
        try:
            connection = await self._connection(endpoint, deadline)
            try:
                response = await connection.send(message, deadline)
            except BaseException:
                await connection.aclose()
                raise
        except TargetRefused as exc:
            return AttemptResult(outcome="refused", error=str(exc))
        except (TimeoutError, httpcore.TimeoutException):
            return self._failure("retry", f"timed out after {self._timeout:g}s", started)
        except _TRANSPORT_ERRORS as exc:
            return self._failure("retry", f"{type(exc).__name__}: {exc}", started)
        try:
            prefix = await _read_prefix(connection, response, deadline)
        except (httpcore.TimeoutException, *_TRANSPORT_ERRORS, zlib.error):
            prefix = b""  # the status line already decides the outcome
        finally:
            await self._release(endpoint, connection)
        return self._result(response, prefix, started)

    async def _connection(self, endpoint: _Endpoint, deadline: float) -> Connection:
        """An idle connection to the endpoint that is still open, or a new one."""
        idle = endpoint.idle
        while idle:
            connection = idle.pop()
            if not connection.expired():  # expired, or closed by the server meanwhile
                return connection
            await connection.aclose()
        scheme, host_bytes, port = endpoint.origin
        host = host_bytes.decode("ascii")
        async with asyncio.timeout_at(deadline):  # resolving included
            stream = await self._backend.connect_tcp(host, port, timeout=self._timeout)
            if scheme == b"https":
                stream = await stream.start_tls(
                    self._ssl_context, server_hostname=host, timeout=self._timeout
                )
        return Connection(stream, self._keepalive_expiry)

    async def _release(self, endpoint: _Endpoint, connection: Connection) -> None:
        """Keep a connection whose response was read whole for the next attempt, or close it."""
        if connection.reusable and len(endpoint.idle) < self._keepalive:
            endpoint.idle.append(connection)
        else:
            await connection.aclose()

    def _result(self, response: Response, prefix: bytes, started: float) -> AttemptResult:
        """How an attempt ended that got a response."""
        latency_ms = (time.perf_counter() - started) * 1000.0
        code = response.status
        text = prefix.decode("utf-8", "replace") if prefix else None
        if 200 <= code < 300:
            return AttemptResult(
                outcome="delivered", status_code=code, response=text, latency_ms=latency_ms
            )
        outcome: Outcome
        retry_after = None
        if code == 410:
            outcome = "gone"
        elif code in (408, 429) or code >= 500:
            outcome = "retry"
            value = _header(response.headers, b"retry-after")
            retry_after = parse_retry_after(value, self._clock())
        else:
            outcome = "failed"
        return AttemptResult(
            outcome=outcome,
            status_code=code,
            error=f"HTTP {code}",
            response=text,
            latency_ms=latency_ms,
            retry_after=retry_after,
        )

    def _endpoint(self, origin: tuple[bytes, bytes, int]) -> _Endpoint:
        endpoint = self._endpoints.get(origin)
        if endpoint is not None:
            self._endpoints.move_to_end(origin)
            return endpoint
        endpoint = self._endpoints[origin] = _Endpoint(origin)
        return endpoint

    async def _sweep(self, now: float) -> None:
        """Close the connections of endpoints unused past keep-alive, and past the limit."""
        self._next_sweep = now + min(self._keepalive_expiry, 10.0)
        stale = now - self._keepalive_expiry
        for key, endpoint in list(self._endpoints.items()):  # least recently used first
            if endpoint.used_at > stale and len(self._endpoints) < _ENDPOINT_LIMIT:
                break
            if endpoint.active:
                continue
            del self._endpoints[key]
            await endpoint.aclose()

    @staticmethod
    def _failure(outcome: Outcome, error: str, started: float) -> AttemptResult:
        latency_ms = (time.perf_counter() - started) * 1000.0
        return AttemptResult(outcome=outcome, error=error, latency_ms=latency_ms)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """A response header's values joined by ", " (as httpx reads them), or None."""
    values = [value.decode("latin-1") for key, value in headers if key.lower() == name]
    return ", ".join(values) if values else None


def _request_bytes(method: str, url: _Url, headers: dict[str, str], content: bytes) -> bytes:
    """The request as sent: request line, Host first, Content-Length last (or 0 after Host),
    then the body. Header names were checked to be tokens and values to hold no control
    characters; values may carry templated user data in any language: sent as UTF-8 octets,
    which HTTP passes through as opaque field content."""
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode("ascii"), url.target, url.host)]
    if not content and method in _BODY_METHODS:
        lines.append(b"Content-Length: 0\r\n")
    for name, value in headers.items():
        lines.append(b"%s: %s\r\n" % (name.encode("ascii"), value.strip(" \t").encode("utf-8")))
    if content:
        lines.append(b"Content-Length: %d\r\n" % len(content))
    lines.append(b"\r\n")
    lines.append(content)
    return b"".join(lines)


async def _read_prefix(connection: Connection, response: Response, deadline: float) -> bytes:
    """The first RESPONSE_PREFIX bytes of the decoded body, reading at most _DRAIN_LIMIT bytes."""
    codings = content_codings(response.headers)
    return await read_prefix(
        connection.body(deadline), codings, limit=RESPONSE_PREFIX, read_limit=_DRAIN_LIMIT
    )
