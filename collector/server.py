"""uvicorn's HTTP protocol with deadlines, so slow or idle clients cannot hold connections.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a client that
connects and sends nothing, or sends its headers or body a byte at a time, is waited for
forever; a few thousand such connections exhaust the file descriptors and every normal request
fails. `GuardedHttp` gives each phase of a request a deadline — the request line and headers
`header_timeout` from the first byte (or from connecting), the body `body_timeout` from the end
of the headers — and answers 408 and closes when one passes. A request answered before its body
was all received (an early 401, 413 or 415) is answered with `Connection: close` and its
connection closed once the answer is sent: a body arriving after the answer would otherwise
complete a request nobody handles, outside every deadline. It also caps the connections one
client address may hold at once (`max_connections_per_client`).

It keeps one timer per connection that re-arms itself, so a request costs two clock reads, not
a timer of its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from collector.config.schema import ServerSettings

_WAITING, _HEADERS, _BODY, _HANDLING = range(4)


def _answer(status: bytes, body: bytes, *headers: bytes) -> bytes:
    head = [status, b"content-type: application/json", b"connection: close", *headers]
    head.append(b"content-length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


_TIMED_OUT = _answer(
    b"HTTP/1.1 408 Request Timeout",
    b'{"error":"request_timeout","detail":"$: the request was not received in time"}',
)
_TOO_MANY = _answer(
    b"HTTP/1.1 429 Too Many Requests",
    b'{"error":"too_many_connections","detail":"too many connections from one address"}',
    b"retry-after: 1",
)


class _Held:
    """Stands in for a connection's transport while uvicorn writes one response message: keeps
    what it writes, and a close, for the cycle to write (and close) afterwards."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _Cycle(RequestResponseCycle):
    """uvicorn's request cycle, closing the connection when answered before the body came, and
    writing a response of known length together with its first body part: a small answer is
    one send(2) and one TCP segment instead of two (a streamed answer, with no length, is
    written as it comes)."""

    _head: bytes | None = None  # a sized response's head, waiting for its body

    async def send(self, message: Any) -> None:
        """Send a response message; an answer started while the body is still due closes."""
        if message["type"] == "http.response.start":
            if self.more_body:
                self.keep_alive = False  # uvicorn says `connection: close` and closes once sent
            if any(name.lower() == b"content-length" for name, _ in message.get("headers", ())):
                written, _ = await self._held(message)
                self._head = b"".join(written)
                return
        elif self._head is not None:
            head, self._head = self._head, None
            written, closing = await self._held(message)
            if self.disconnected:
                return  # the client left meanwhile: nothing to write to
            self.transport.write(b"".join([head, *written]))
            if closing:
                self.transport.close()
            return
        await super().send(message)

    async def _held(self, message: Any) -> tuple[list[bytes], bool]:
        """Let uvicorn handle `message` with its writes (and a close) held back: what it wrote,
        and whether it closed."""
        transport = self.transport
        held = _Held(transport)
        self.transport = held  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
        return held.written, held.closing


class GuardedHttp(HttpToolsProtocol):
    """The httptools protocol with header and body deadlines and a per-client connection cap."""

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections_per_client = 256
    _per_client: dict[str, int] = {}  # noqa: RUF012 - shared by every connection of the process

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection's deadline; refuse it when its client holds too many already."""
        super().connection_made(transport)
        self._phase = _WAITING
        self._since = self.loop.time()
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.header_timeout, self._check
        )
        self._address = self.client[0] if self.client else ""
        held = self._per_client.get(self._address, 0) + 1
        self._per_client[self._address] = held
        if self.max_connections_per_client and held > self.max_connections_per_client:
            transport.write(_TOO_MANY)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection's deadline and count."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        left = self._per_client.get(self._address, 1) - 1
        if left > 0:
            self._per_client[self._address] = left
        else:
            self._per_client.pop(self._address, None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        """A request's first byte: its headers are due within header_timeout."""
        super().on_message_begin()
        self._phase = _HEADERS
        self._since = self.loop.time()

    def on_headers_complete(self) -> None:
        """Headers done: the body is due within body_timeout."""
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.__class__ = _Cycle  # the same object, with the early answer's close
        self._phase = _BODY
        self._since = self.loop.time()

    def on_message_complete(self) -> None:
        """The request is in: the app has as long as it needs (streams may last)."""
        super().on_message_complete()
        if self._phase == _BODY:
            self._phase = _HANDLING

    def on_response_complete(self) -> None:
        """Answered: waiting for the next request (uvicorn's keep-alive timeout also runs)."""
        super().on_response_complete()
        self._phase = _WAITING
        self._since = self.loop.time()

    def _check(self, *_: Any) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        phase = self._phase
        limit = self.body_timeout if phase == _BODY else self.header_timeout
        left = limit - (self.loop.time() - self._since)
        if phase != _HANDLING and left <= 0:
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(_TIMED_OUT)
            if self.cycle is not None:
                self.cycle.disconnected = True  # the app reading the body sees a disconnect
                self.cycle.message_event.set()
            self.transport.close()
            return
        wait = left if phase != _HANDLING else self.header_timeout
        self._timer = self.loop.call_later(max(wait, 0.05), self._check)


def configure(settings: ServerSettings) -> type[GuardedHttp]:
    """Set the deadlines and the connection cap for this process; returns the protocol class."""
    GuardedHttp.header_timeout = float(settings.header_timeout)
    GuardedHttp.body_timeout = float(settings.body_timeout)
    GuardedHttp.max_connections_per_client = settings.max_connections_per_client
    return GuardedHttp
