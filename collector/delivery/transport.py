"""The network under webhook delivery: httpcore streams on asyncio transports, guarded dials.

`GuardedBackend` is an httpcore network backend (the interface the sender dials through). It
resolves a target host with the SSRF guard and connects only to the addresses it checked, so
nothing re-resolves the name between check and connect. `TransportStream` is the stream the
sender's HTTP/1.1 connections (`http11`) read and write: the asyncio protocol is the stream
itself, so "did the server close this idle connection?" is a flag the transport sets rather
than a poll of the socket, and a request's writes are held until its response is awaited and
then leave in one send.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any, Final, cast

import httpcore

from collector.delivery.ssrf import Guard, ResolutionFailed

_CORK_LIMIT: Final = 65536  # held request bytes that are sent at once, without waiting for a read
_READ_HIGH_WATER: Final = 262144  # received bytes held before the socket stops being read


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Dials only addresses the guard resolved and checked."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

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
                return await TransportStream.connect(
                    address, port, timeout, local_address, socket_options
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
        await asyncio.sleep(seconds)


class TransportStream(asyncio.Protocol, httpcore.AsyncNetworkStream):
    """An httpcore network stream on an asyncio transport: the protocol is the stream."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._received: deque[bytes] = deque()
        self._buffered = 0  # bytes in _received
        self._held: list[bytes] = []  # written, not yet sent (see write)
        self._held_size = 0
        self._eof = False
        self._lost = False
        self._error: Exception | None = None  # why the connection was lost, if not cleanly
        self._reading_paused = False
        self._writing_paused = False
        self._reader: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None

    @classmethod
    async def connect(
        cls,
        address: str,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[Any] | None,
    ) -> TransportStream:
        """Open a TCP connection to an address (never a name: it is the one the guard checked)."""
        loop = asyncio.get_running_loop()
        local = None if local_address is None else (local_address, 0)
        try:
            async with asyncio.timeout(timeout):
                transport, stream = await loop.create_connection(
                    cls, address, port, local_addr=local
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"connecting to {address} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        if socket_options:
            sock = transport.get_extra_info("socket")
            for option in socket_options:
                sock.setsockopt(*option)
        return stream

    # asyncio.Protocol: the transport reports here.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self._received.append(data)
        self._buffered += len(data)
        if self._buffered > _READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        _wake(self._reader)

    def eof_received(self) -> bool | None:
        self._eof = True
        _wake(self._reader)
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._error = exc
        _wake(self._reader)
        _wake(self._drainer)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        _wake(self._drainer)

    # httpcore.AsyncNetworkStream: the HTTP/1.1 connection calls these.

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Return received bytes, b"" at the end of the stream; send held writes first."""
        if self._held:
            await self._flush(timeout)
        while not self._received:
            if self._error is not None:
                raise httpcore.ReadError(str(self._error) or type(self._error).__name__)
            if self._eof or self._lost:
                return b""
            self._reader = self._loop.create_future()
            await self._wait(self._reader, timeout, httpcore.ReadTimeout)
        chunk = self._received.popleft()
        if len(chunk) > max_bytes:
            self._received.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= _READ_HIGH_WATER // 4:
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        return chunk

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Queue bytes to send; they leave with the next read, or now past _CORK_LIMIT.

        A request may be written in parts before its response is read: holding the writes
        until then sends each request in one segment and one syscall.
        """
        if not buffer:
            return
        if self._lost:
            raise httpcore.WriteError("connection closed")
        self._held.append(buffer)
        self._held_size += len(buffer)
        if self._held_size >= _CORK_LIMIT:
            await self._flush(timeout)

    async def aclose(self) -> None:
        """Close the connection."""
        self._held.clear()
        if self._transport is not None:
            self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Upgrade to TLS, checking the certificate for server_hostname (also sent as SNI)."""
        assert self._transport is not None
        try:
            async with asyncio.timeout(timeout):
                transport = await self._loop.start_tls(
                    self._transport, self, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.close()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from exc
        except OSError as exc:  # ssl.SSLError included
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if transport is None:
            raise httpcore.ConnectError("TLS handshake failed")
        self._transport = transport
        return self

    def get_extra_info(self, info: str) -> Any:
        """What a connection asks of its stream; "is_readable" without a system call."""
        if info == "is_readable":
            # Only asked of idle connections: anything received, or the end, means it is done.
            return bool(self._received) or self._eof or self._lost
        if self._transport is None:
            return None
        name = _EXTRA_INFO.get(info)
        return None if name is None else self._transport.get_extra_info(name)

    async def _flush(self, timeout: float | None) -> None:
        """Send the held writes; on a lost connection they are dropped, as the read will tell."""
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._held_size = 0
        if self._lost:
            return
        assert self._transport is not None
        self._transport.write(data)
        while self._writing_paused and not self._lost:
            self._drainer = self._loop.create_future()
            await self._wait(self._drainer, timeout, httpcore.WriteTimeout)

    async def _wait(
        self,
        waiter: asyncio.Future[None],
        timeout: float | None,
        expired: type[httpcore.TimeoutException],
    ) -> None:
        if timeout is None:
            await waiter
            return
        timer = self._loop.call_later(timeout, _expire, waiter, expired)
        try:
            await waiter
        finally:
            timer.cancel()


_EXTRA_INFO: Final = {
    "ssl_object": "ssl_object",
    "client_addr": "sockname",
    "server_addr": "peername",
    "socket": "socket",
}


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _expire(waiter: asyncio.Future[None], error: type[httpcore.TimeoutException]) -> None:
    if not waiter.done():
        waiter.set_exception(error("timed out"))
