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
a timer of its own, and writes an answer of known length in one go once it is complete
(`_Coalescing`), so a small answer is one send(2) and one TCP segment, not two.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


_HOLD_BYTES = 64 * 1024  # a sized answer is held until complete up to this much, then streams


class _Coalescing:
    """A connection's transport that writes an answer of known length in one go when it is
    complete: its head and body, written by uvicorn as two messages, leave as one send(2) and
    one TCP segment instead of two. A streamed answer (no length), a long one past _HOLD_BYTES
    and anything written outside an answer go as they come; a close writes what is held first.
    The protocol writes what is held when the answer is complete (`flush`)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttp) -> None:
        self.transport = transport
        self._protocol = protocol
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        cycle = self._protocol.cycle
        if (
            cycle is not None
            and cycle.chunked_encoding is False  # sized: its length was in its head
            and not cycle.response_complete
            and self._size + len(data) <= _HOLD_BYTES
        ):
            self._held.append(data)
            self._size += len(data)
            return
        self.flush()
        if not self.transport.is_closing():
            self.transport.write(data)

    def flush(self) -> None:
        """Write what is held."""
        held = self._held
        if held:
            self._held = []
            self._size = 0
            if not self.transport.is_closing():  # the client may have gone meanwhile
                self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class GuardedHttp(HttpToolsProtocol):
    """The httptools protocol with header and body deadlines and a per-client connection cap."""

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections_per_client = 256
    _per_client: dict[str, int] = {}  # noqa: RUF012 - shared by every connection of the process

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection's deadline; refuse it when its client holds too many already."""
        super().connection_made(transport)
        self._writer = _Coalescing(transport, self)
        self.transport = self._writer  # type: ignore[assignment]
        self._keep_alive = True  # whether the request being read may keep the connection
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
        """Headers done: the body is due within body_timeout. Until it is all in, an answer
        closes the connection (uvicorn says `connection: close`, and closes once it is sent)."""
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None:
            self._keep_alive = cycle.keep_alive
            cycle.keep_alive = False
        self._phase = _BODY
        self._since = self.loop.time()

    def on_message_complete(self) -> None:
        """The request is in: the app has as long as it needs (streams may last)."""
        super().on_message_complete()
        cycle = self.cycle
        if cycle is not None and self._keep_alive and not cycle.response_started:
            cycle.keep_alive = True  # not answered early: the connection may be kept
        if self._phase == _BODY:
            self._phase = _HANDLING

    def shutdown(self) -> None:
        """The server is stopping: the request being read does not keep the connection."""
        self._keep_alive = False
        super().shutdown()

    def on_response_complete(self) -> None:
        """Answered: waiting for the next request (uvicorn's keep-alive timeout also runs)."""
        self._writer.flush()  # the answer, in one write
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
