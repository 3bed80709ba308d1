"""A real HTTP sink for tests: uvicorn on a loopback port, in a background thread.

It records every request (method, path, query, headers, body, time received) and answers with
scripted replies, a handler, or a default. It can hang, be stopped and started again on the same
port (to play a receiver that is down for a while), and be waited on:

    with Sink() as sink:                               # or Sink(host="::1")
        sink.script(503, Reply(429, headers={"Retry-After": "1"}), 200)
        ...send to sink.url + "/hook"...
        first, second, third = sink.wait_for(3)        # blocking; in async tests:
        received = await sink.wait_for_async(3)        # same, without blocking the event loop

    Sink(handler=lambda request: Reply(200, body=request.body))   # echo
    Sink(default=HANG)                                             # never answers until release()
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from tests.support.poll import wait_until


@dataclass(frozen=True)
class Reply:
    """What the sink answers: status, headers, body, after an optional delay (seconds)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | str = b""
    delay: float = 0.0


HANG = Reply(status=503, delay=math.inf)  # answers only when released or stopped


@dataclass(frozen=True)
class Received:
    """One request as the sink saw it."""

    method: str
    path: str
    query: str  # raw query string
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    received_at: float  # time.time() when the body was complete
    received_mono: float  # time.perf_counter() at the same moment (same clock as the tests')
    target: str = ""  # the request target as on the request line: raw path, `?`, raw query

    @property
    def params(self) -> dict[str, list[str]]:
        """The query string, parsed."""
        return parse_qs(self.query, keep_blank_values=True)

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


Handler = Callable[[Received], "Reply | int | Awaitable[Reply | int]"]


def _target(scope: dict[str, Any]) -> str:
    """The raw request target (path and query, still percent-encoded) of an ASGI scope."""
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope["query_string"]
    return (raw + b"?" + query if query else raw).decode("latin-1")


def _as_reply(value: Reply | int) -> Reply:
    return value if isinstance(value, Reply) else Reply(status=value)


class Sink:
    """An HTTP server that records requests and answers as told."""

    def __init__(
        self,
        *script: Reply | int,
        handler: Handler | None = None,
        default: Reply | int = 200,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self._handler = handler
        self._default = _as_reply(default)
        self._script: deque[Reply] = deque(_as_reply(r) for r in script)
        self._received: list[Received] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None

    # Lifecycle

    def start(self) -> Sink:
        """Start serving (again, on the same port after a stop)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on such sockets, and without it
        # small responses stall on delayed ACKs (~40 ms each).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            interface="asgi3",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=self._serve, args=(server, sock), name=f"sink-{self.port}", daemon=True
        )
        self._thread.start()
        thread = self._thread
        wait_until(lambda: server.started, interval=0.005, message=f"the sink on port {self.port}",
                   give_up=lambda: not thread.is_alive())
        return self

    def stop(self) -> None:
        """Release hanging requests, close connections and stop serving."""
        if self._server is None or self._thread is None:
            return
        self.release()
        self._server.should_exit = True
        self._thread.join(15)
        self._server = None
        self._thread = None

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234 (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # Behaviour

    def script(self, *replies: Reply | int) -> None:
        """Queue replies for the next requests, in order; then the handler or default answers."""
        with self._changed:
            self._script.extend(_as_reply(r) for r in replies)

    def set_handler(self, handler: Handler | None) -> None:
        """Answer with handler(received) once the script is used up."""
        self._handler = handler

    def set_default(self, reply: Reply | int) -> None:
        """Answer with this when neither script nor handler applies."""
        self._default = _as_reply(reply)

    def release(self) -> None:
        """Let every request currently held by a delay answer now."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._release_now)

    def _release_now(self) -> None:
        if self._release is not None:
            self._release.set()
        self._release = asyncio.Event()  # later delays hang again

    # Observation

    @property
    def requests(self) -> list[Received]:
        """Every request received so far (a copy)."""
        with self._changed:
            return list(self._received)

    def clear(self) -> None:
        """Forget the requests received so far."""
        with self._changed:
            self._received.clear()

    def wait_until(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0
    ) -> list[Received]:
        """Block until predicate(requests) holds; fail with what arrived after `timeout`."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self._received), timeout):
                raise AssertionError(
                    f"sink condition not met within {timeout}s; got {len(self._received)} "
                    f"requests: {[(r.method, r.path) for r in self._received][-10:]}"
                )
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least `count` requests arrived; return them."""
        return self.wait_until(lambda received: len(received) >= count, timeout)

    async def wait_for_async(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Like wait_for, without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for, count, timeout)

    async def wait_until_async(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0
    ) -> list[Received]:
        """Like wait_until, without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_until, predicate, timeout)

    # Server side

    def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve_async(server, sock))
        finally:
            loop.close()
            sock.close()

    async def _serve_async(self, server: uvicorn.Server, sock: socket.socket) -> None:
        self._release = asyncio.Event()
        await server.serve(sockets=[sock])

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        received = Received(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers=headers,
            body=b"".join(chunks),
            received_at=time.time(),
            received_mono=time.perf_counter(),
            target=_target(scope),
        )
        with self._changed:
            self._received.append(received)
            scripted = self._script.popleft() if self._script else None
            self._changed.notify_all()
        reply = scripted or await self._reply_for(received)
        release = self._release
        if reply.delay > 0 and release is not None:
            try:
                timeout = None if math.isinf(reply.delay) else reply.delay
                async with asyncio.timeout(timeout):
                    await release.wait()
            except TimeoutError:
                pass
        body = reply.body.encode() if isinstance(reply.body, str) else reply.body
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _reply_for(self, received: Received) -> Reply:
        if self._handler is None:
            return self._default
        result = self._handler(received)
        if inspect.isawaitable(result):
            result = await result
        return _as_reply(result)
