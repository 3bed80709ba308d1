"""One HTTP/1.1 exchange at a time on a kept-alive connection, its answer parsed by llhttp.

The sender builds a request's bytes itself (its header names checked to be tokens, its values
free of control characters) and `Connection.send` writes them and reads the answer's head;
`Connection.body` then yields the answer's body as it arrives. The framing — Content-Length,
chunked, a body that ends with the connection, 1xx interim answers skipped, conflicting
lengths refused — is httptools' llhttp, the C parser the ingest server reads requests with.
A pure-Python parser (h11 under httpcore) cost about 70 µs of CPU per webhook here, most of a
webhook's whole budget; llhttp parses a typical answer in a few.

A connection is kept for the next request only when its answer was read to the end, both
sides keep it alive, and nothing came after the answer. The stream beneath is any httpcore
network stream (`transport.TransportStream` in delivery), whose errors pass through as they
are: httpcore.ReadError, httpcore.ReadTimeout and the like.

    connection = Connection(stream, keepalive_expiry=30.0)
    response = await connection.send(request_bytes, deadline)   # loop.time() deadline
    async for chunk in connection.body(deadline): ...
    if connection.reusable: ...                                 # else: await connection.aclose()
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

import httpcore
import httptools

_READ_SIZE: Final = 65536


class ProtocolError(Exception):
    """The answer is not HTTP/1.1 as a server may send it, or the connection ended before it."""


class Response:
    """An answer's status and headers (names and values as sent)."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers


class Connection:
    """A kept-alive HTTP/1.1 connection: one request, then its answer, then the next."""

    __slots__ = (
        "_body",
        "_complete",
        "_expires_at",
        "_headers",
        "_keep_alive",
        "_keepalive_expiry",
        "_loop",
        "_parser",
        "_status",
        "_stream",
        "_trailing",
    )

    def __init__(self, stream: httpcore.AsyncNetworkStream, keepalive_expiry: float) -> None:
        self._stream = stream
        self._loop = asyncio.get_running_loop()
        self._keepalive_expiry = keepalive_expiry
        self._expires_at = self._loop.time() + keepalive_expiry
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._status = 0  # the final answer's status once its head is read, else 0
        self._keep_alive = False
        self._complete = False  # the answer was read to its end
        self._trailing = False  # bytes came after the answer

    @property
    def reusable(self) -> bool:
        """Whether the last answer was read whole and the connection may carry another."""
        return self._complete and self._keep_alive and not self._trailing

    def expired(self) -> bool:
        """Whether an idle connection is past keep-alive, or the server closed it (or sent
        something) meanwhile."""
        return self._loop.time() > self._expires_at or bool(
            self._stream.get_extra_info("is_readable")
        )

    async def send(self, request: bytes, deadline: float) -> Response:
        """Send one request and read its answer's head (headers, and any body bytes with them).

        Raises ProtocolError, and the stream's errors (httpcore.ReadError, ReadTimeout, ...).
        """
        self._parser = httptools.HttpResponseParser(self)
        self._headers = []
        self._body = []
        self._status = 0
        self._complete = self._keep_alive = self._trailing = False
        await self._stream.write(request, deadline - self._loop.time())
        while not self._status:
            if not await self._read(deadline):
                raise ProtocolError("server disconnected without sending a response")
        return Response(self._status, self._headers)

    async def body(self, deadline: float) -> AsyncIterator[bytes]:
        """The answer's body, chunk by chunk as it arrives, until its end or the connection's."""
        while True:
            if self._body:
                chunks, self._body = self._body, []
                for chunk in chunks:
                    yield chunk
            if self._complete or not await self._read(deadline):
                return

    async def aclose(self) -> None:
        """Close the connection."""
        self._keep_alive = False
        await self._stream.aclose()

    async def _read(self, deadline: float) -> bool:
        """Feed the parser what arrives next; False at the end of the stream."""
        data = await self._stream.read(_READ_SIZE, deadline - self._loop.time())
        if not data:
            self._keep_alive = False
            return False
        assert self._parser is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise ProtocolError("server switched protocols") from exc
        except httptools.HttpParserError as exc:
            if self._complete:  # what follows the answer does not parse: the answer stands
                self._trailing = True
                return True
            raise ProtocolError(f"invalid answer: {exc}") from exc
        return True

    # httptools calls these while parsing.

    def on_message_begin(self) -> None:
        if self._complete:
            self._trailing = True  # unasked-for bytes after the answer

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): skipped
            self._headers = []
            return
        self._status = status
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status:
            self._complete = True
            self._expires_at = self._loop.time() + self._keepalive_expiry
