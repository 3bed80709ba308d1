"""The server's protocol writes an answer of known length in one go once it is complete; these
check that what clients receive is unchanged by that: long answers whole and in order, streamed
answers part by part as the app sends them."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from collector.server import GuardedHttp
from tests.support.poll import wait_until

LONG = bytes(range(256)) * 800  # 200 KiB: past what is held before it is written
PART = len(LONG) // 4


class _App:
    """Answers /long (sized, in four parts), /stream (no length, its second part only once the
    test says so) and /small."""

    def __init__(self) -> None:
        self.release: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/long":
            headers = [(b"content-length", b"%d" % len(LONG))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for start in range(0, len(LONG), PART):
                body = LONG[start : start + PART]
                more = start + PART < len(LONG)
                await send({"type": "http.response.body", "body": body, "more_body": more})
        elif path == "/stream":
            self.release = asyncio.Event()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"second\n"})
        else:
            body = b'{"success":true}'
            headers = [(b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})


@pytest.fixture
def served() -> Iterator[tuple[str, _App, asyncio.AbstractEventLoop]]:
    """The app on uvicorn with the collector's protocol, in a thread: its URL, app and loop."""
    app = _App()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, http=GuardedHttp, lifespan="off", log_level="warning", access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(server.serve(sockets=[sock]),), daemon=True
    )
    thread.start()
    wait_until(lambda: server.started, message=f"the server on port {port}",
               give_up=lambda: not thread.is_alive())
    yield f"http://127.0.0.1:{port}", app, loop
    server.should_exit = True
    thread.join(10)
    loop.close()
    sock.close()


def test_a_long_answer_arrives_whole_and_in_order(
    served: tuple[str, _App, asyncio.AbstractEventLoop],
) -> None:
    url, _, _ = served
    with httpx.Client(trust_env=False) as client:
        for _ in range(3):  # on one kept-alive connection, each answer its own
            assert client.get(f"{url}/long").content == LONG
            assert client.get(f"{url}/small").json() == {"success": True}


def test_a_streamed_answer_arrives_part_by_part(
    served: tuple[str, _App, asyncio.AbstractEventLoop],
) -> None:
    url, app, loop = served
    with (
        httpx.Client(trust_env=False, timeout=10) as client,
        client.stream("GET", f"{url}/stream") as response,
    ):
        lines = response.iter_lines()
        assert next(lines) == "first"  # sent while the app still waits: not held back
        assert app.release is not None
        loop.call_soon_threadsafe(app.release.set)
        assert next(lines) == "second"
