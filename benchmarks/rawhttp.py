"""Minimal HTTP/1.1 over asyncio streams, for load generation and sinks that must stay cheap.

A general client (httpx) costs several hundred microseconds of CPU per request here; at a few
hundred requests per second it would measure its own queueing instead of the collector.
These speak only what the benchmarks need: keep-alive, Content-Length bodies, no chunking.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Connection:
    """One keep-alive connection sending prebuilt requests and reading the answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        """Connect to host:port."""
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def post(self, host: str, path: str, body: bytes) -> int:
        """POST a JSON body; return the status code (the response body is read and dropped)."""
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        """Close the connection."""
        self.writer.close()


class Sink:
    """A sink on 127.0.0.1 answering 204; calls `on_body(body, arrived)` per request."""

    def __init__(self, on_body: Callable[[bytes, float], None]) -> None:
        self.on_body = on_body
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int) -> None:
        """Listen on 127.0.0.1:port."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()
        await asyncio.sleep(0)  # let the handlers see their connections end

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                self.on_body(body, time.perf_counter())
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()
