"""One webhook attempt over HTTP: shape the request, sign it, send it through the SSRF guard.

This module and `delivery` are the only ones that import httpx. The client connects through a
network backend that resolves the host with `ssrf.Guard` and dials only the addresses it checked,
so there is no second resolution to rebind, while the URL keeps its host name: the `Host` header,
TLS SNI, certificate checks and the connection pool (keyed by host name) all stay right.

Request shape: GET merges the body (an object) into the URL's query, body keys replacing
same-named URL keys, and signs an empty payload; other methods send the body as JSON with
`Content-Type: application/json` unless the campaign's headers set one. Campaign headers cannot
override framing headers (Host, Content-Length, ...) or the `webhook-*` signature headers.

    sender = Sender(signer=Signer(secrets), guard=Guard(policy), timeout=10.0)
    result = await sender.send(request)      # AttemptResult; never raises for the target's faults
    await sender.aclose()
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpcore
import httpx
import msgspec
import orjson

from collector import __version__
from collector.signing import Signer
from collector.ssrf import Guard, ResolutionFailed, TargetRefused
from collector.webhook import WebhookRequest

USER_AGENT: Final = f"Tripwire/{__version__}"
RESPONSE_PREFIX: Final = 4096
_DRAIN_LIMIT: Final = 65536  # read this much of a response at most, so its connection is reused
_URL_CACHE_SIZE: Final = 1024
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")
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


class Sender:
    """Sends single attempts through one pooled httpx client."""

    def __init__(
        self,
        *,
        signer: Signer,
        guard: Guard,
        timeout: float,
        clock: Callable[[], float] = time.time,
        keepalive: int = 256,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._signer = signer
        self._timeout = timeout
        self._clock = clock
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        self._urls: dict[str, httpx.URL] = {}  # parsed URLs; campaigns reuse a few
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=keepalive, keepalive_expiry=30.0
        )
        self._client = httpx.AsyncClient(
            transport=transport or GuardedTransport(guard, limits),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": USER_AGENT},
        )

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()

    def prepare(self, request: WebhookRequest) -> tuple[httpx.URL, bytes, dict[str, str]]:
        """Return URL, body and headers (unsigned) for a webhook; raise InvalidRequest."""
        url = self._parse_url(request.url)
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
        headers = {"user-agent": USER_AGENT, "accept": "*/*"}
        for name, value in request.headers.items():
            if not _TOKEN.fullmatch(name):
                raise InvalidRequest(f"invalid header name {name!r}")
            if _FORBIDDEN_IN_VALUE.search(value):
                raise InvalidRequest(f"header {name!r} contains CR, LF or NUL")
            lower = name.lower()
            if lower not in _RESERVED:
                headers[lower] = value
        if content and "content-type" not in headers:
            headers["content-type"] = "application/json"
        return url, content, headers

    def _parse_url(self, text: str) -> httpx.URL:
        url = self._urls.get(text)
        if url is not None:
            return url
        try:
            url = httpx.URL(text)
        except httpx.InvalidURL as exc:
            raise InvalidRequest(f"invalid URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise InvalidRequest("URL must be http(s) with a host")
        if len(self._urls) >= _URL_CACHE_SIZE:
            self._urls.clear()
        self._urls[text] = url
        return url

    async def send(self, request: WebhookRequest) -> AttemptResult:
        """Make one signed attempt and classify how it ended."""
        try:
            url, content, headers = self.prepare(request)
        except InvalidRequest as exc:
            return AttemptResult(outcome="failed", error=str(exc))
        headers.update(self._signer.headers(request.webhook_id, int(self._clock()), content))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        started = time.perf_counter()
        try:
            http_request = httpx.Request(
                request.method.upper(),
                url,
                content=content or None,
                headers=headers,
                extensions=self._extensions,
            )
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(http_request, stream=True)
        except TargetRefused as exc:
            return AttemptResult(outcome="refused", error=str(exc))
        except (TimeoutError, httpx.TimeoutException):
            return self._failure("retry", f"timed out after {self._timeout:g}s", started)
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return self._failure("failed", f"{type(exc).__name__}: {exc}", started)
        except httpx.TransportError as exc:
            return self._failure("retry", f"{type(exc).__name__}: {exc}", started)
        try:
            async with asyncio.timeout_at(deadline):
                prefix = await _read_prefix(response)
        except (TimeoutError, httpx.HTTPError):
            prefix = b""  # the status line already decides the outcome
        finally:
            await response.aclose()
        latency_ms = (time.perf_counter() - started) * 1000.0
        code = response.status_code
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
            retry_after = parse_retry_after(response.headers.get("retry-after"), self._clock())
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

    @staticmethod
    def _failure(outcome: Outcome, error: str, started: float) -> AttemptResult:
        latency_ms = (time.perf_counter() - started) * 1000.0
        return AttemptResult(outcome=outcome, error=error, latency_ms=latency_ms)


async def _read_prefix(response: httpx.Response) -> bytes:
    kept = bytearray()
    seen = 0
    async for chunk in response.aiter_bytes():
        if len(kept) < RESPONSE_PREFIX:
            kept += chunk[: RESPONSE_PREFIX - len(kept)]
        seen += len(chunk)
        if seen > _DRAIN_LIMIT:
            break
    return bytes(kept)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Dials only addresses the guard resolved and checked."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._guard.resolve(host)
        except ResolutionFailed as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's errors as httpx's, most specific first.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _translated(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except httpcore.TimeoutException as exc:
        raise _translate(exc, request) from exc
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise _translate(exc, request) from exc


def _translate(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    for source, target in _ERRORS:
        if isinstance(exc, source):
            return target(str(exc), request=request)
    return httpx.TransportError(str(exc), request=request)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _translated(self._request):
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            with _translated(self._request):
                await self._stream.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections go only where the SSRF guard allows."""

    def __init__(self, guard: Guard, limits: httpx.Limits) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            retries=0,
            network_backend=_GuardedBackend(guard),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request through the guarded pool."""
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _translated(request):
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._pool.aclose()
