"""The request bin: records any request sent to `/bin/{name}` and shows it live.

    bin = RequestBin(max_requests=200)
    app.state.request_bin = bin        # the endpoints below find it there; `collector.app`
                                       # mounts them on the collector or `tripwire bin`

Memory is bounded in bytes, not only in counts: `max_requests` per bin and at most
`MAX_BIN_BYTES` of them (the oldest go first), `MAX_BINS` bins (the least recently used goes),
the first `MAX_BODY` bytes of each body, `MAX_HEADER_VALUE` characters of each header value,
`MAX_HEADERS` headers and `MAX_HEADERS_BYTES` of headers per request; at most `max_streams` live
views at once. What an entry costs is what it holds in memory (each header's objects included,
not only its characters), so many tiny headers cannot hold more than a bin's budget.
Everything here is readable cross-origin, so a page on another origin (the demo shop) can show
webhooks arriving.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import html
import itertools
import re
import string
import sys
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from importlib import resources
from typing import Any, cast

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from collector.errors import BadRequest, PayloadTooLarge, TooManyRequests

PREFIX = "/bin"
MAX_BINS = 100
MAX_BODY = 64 * 1024
MAX_WIRE_BODY = 10 * 1024 * 1024
MAX_BIN_BYTES = 1024 * 1024  # per bin: kept bodies and headers together
MAX_HEADER_VALUE = 1024  # characters kept of one header value
MAX_HEADERS_BYTES = 8 * 1024  # header names and values kept per request, with their overhead
MAX_HEADERS = 100  # headers kept per request
MAX_TARGET = 2048  # characters kept of the path and of the query
MAX_STREAMS = 100
HEARTBEAT_SECONDS = 10.0
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": ", ".join(ALL_METHODS),
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Max-Age": "600",
}
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", **CORS}


class BinRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded request."""

    id: int
    bin: str
    at: float  # epoch seconds
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: str  # UTF-8 text, or base64 when `body_base64`
    body_base64: bool = False
    body_size: int  # bytes received, even when `body` was cut at MAX_BODY
    truncated: bool = False
    headers_truncated: bool = False  # values cut at MAX_HEADER_VALUE or headers left out

    def cost(self) -> int:
        """About how many bytes of memory this entry holds."""
        return (
            sys.getsizeof(self.body) + sys.getsizeof(self.path) + sys.getsizeof(self.query)
            + sys.getsizeof(self.headers) + sum(_header_cost(k, v) for k, v in self.headers)
            + _ENTRY_SIZE
        )


class BinSummary(msgspec.Struct, frozen=True):
    """A bin as the list shows it."""

    name: str
    count: int
    last_at: float | None


class RequestBin:
    """Bins of recorded requests, in memory, with waiters woken on each new one."""

    def __init__(
        self, max_requests: int = 200, max_bins: int = MAX_BINS, max_streams: int = MAX_STREAMS
    ) -> None:
        self.max_requests = max_requests
        self.max_bins = max_bins
        self.max_streams = max_streams
        self.streams = 0  # live views open now
        self._bins: OrderedDict[str, deque[BinRequest]] = OrderedDict()
        self._bytes: dict[str, int] = {}  # bin -> what its entries cost (BinRequest.cost)
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self.closed = False

    def record(
        self,
        name: str,
        *,
        method: str,
        path: str,
        query: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        body_size: int | None = None,
        now: float | None = None,
    ) -> BinRequest:
        """Keep one request in bin `name` (created on first use) and wake the live views."""
        size = len(body) if body_size is None else body_size
        kept = body[:MAX_BODY]
        try:
            text, is_base64 = kept.decode("utf-8"), False
        except UnicodeDecodeError:
            text, is_base64 = base64.b64encode(kept).decode("ascii"), True
        kept_headers, headers_cut = _bounded_headers(headers)
        entry = BinRequest(
            id=next(self._ids),
            bin=name,
            at=time.time() if now is None else now,
            method=method,
            path=path[:MAX_TARGET],
            query=query[:MAX_TARGET],
            headers=kept_headers,
            body=text,
            body_base64=is_base64,
            body_size=size,
            truncated=size > len(kept),
            headers_truncated=headers_cut,
        )
        requests = self._bins.get(name)
        if requests is None:
            requests = self._bins[name] = deque()
            self._bytes[name] = 0
            while len(self._bins) > self.max_bins:
                gone, _ = self._bins.popitem(last=False)
                self._bytes.pop(gone, None)
        self._bins.move_to_end(name)
        requests.append(entry)
        used = self._bytes[name] + entry.cost()
        while len(requests) > self.max_requests or (used > MAX_BIN_BYTES and len(requests) > 1):
            used -= requests.popleft().cost()
        self._bytes[name] = used
        self._wake()
        return entry

    def bins(self) -> list[BinSummary]:
        """Every bin, most recently used first."""
        return [
            BinSummary(name, len(requests), requests[-1].at if requests else None)
            for name, requests in reversed(self._bins.items())
        ]

    def requests(self, name: str, after: int = 0) -> list[BinRequest]:
        """The requests kept in a bin with an id above `after`, oldest first."""
        return [r for r in self._bins.get(name, ()) if r.id > after]

    def clear(self, name: str) -> None:
        """Forget a bin and what it holds."""
        self._bins.pop(name, None)
        self._bytes.pop(name, None)
        self._wake()

    async def wait(self, timeout: float) -> None:
        """Return when something was recorded (or the bin closed), or after `timeout` seconds."""
        if self.closed:
            return
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    def close(self) -> None:
        """End every live stream (the server is shutting down)."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


# -- HTTP ------------------------------------------------------------------------------------
# The endpoints read the bin from `request.app.state.request_bin`; `collector.app` lists their
# routes, mounted under PREFIX on the collector and on the standalone `tripwire bin`.


def bin_of(request: Request) -> RequestBin:
    """The request bin of the app serving this request."""
    return cast(RequestBin, request.app.state.request_bin)


@functools.cache
def _pages() -> dict[str, string.Template]:
    return {
        "view": string.Template(_resource("templates", "bin.html")),
        "index": string.Template(_resource("templates", "bins.html")),
    }


@functools.cache
def _assets() -> dict[str, tuple[str, str]]:
    return {
        "bin.js": (_resource("static", "bin.js"), "application/javascript; charset=utf-8"),
        # one stylesheet for the bin and the dashboard
        "tripwire.css": (
            _resource("static", "tripwire.css", package="collector.admin"),
            "text/css; charset=utf-8",
        ),
    }


async def index(request: Request) -> Response:
    """GET /bin/: every bin (HTML, or JSON when asked)."""
    summaries = bin_of(request).bins()
    if _wants_json(request):
        return JSONResponse({"bins": msgspec.to_builtins(summaries)}, headers=CORS)
    rows = "".join(
        f'<tr><td><a href="{PREFIX}/{_e(s.name)}/view">{_e(s.name)}</a></td>'
        f"<td>{s.count}</td><td>{_clock(s.last_at)}</td></tr>"
        for s in summaries
    ) or '<tr><td colspan="3" class="muted">No bins yet: send a request to a bin URL.</td></tr>'
    example = _e(_origin(request) + PREFIX + "/demo")
    return HTMLResponse(_pages()["index"].substitute(prefix=PREFIX, rows=rows, example=example))


async def view(request: Request) -> Response:
    """GET /bin/{name}/view: the live page of one bin."""
    name = _name(request)
    url = _origin(request) + f"{PREFIX}/{name}"
    return HTMLResponse(_pages()["view"].substitute(prefix=PREFIX, name=_e(name), url=_e(url)))


async def feed(request: Request) -> Response:
    """GET /bin/{name}/requests: what a bin holds, newest first, as JSON."""
    bin_ = bin_of(request)
    name = _name(request)
    after = _int(request.query_params.get("after"), 0)
    found = bin_.requests(name, after)
    limit = _int(request.query_params.get("limit"), bin_.max_requests)
    kept = found[-limit:] if limit > 0 else []
    newest_first = [msgspec.to_builtins(r) for r in reversed(kept)]
    return JSONResponse({"bin": name, "requests": newest_first}, headers=CORS)


async def stream(request: Request) -> Response:
    """GET /bin/{name}/stream: each request as it arrives, as Server-Sent Events."""
    bin_ = bin_of(request)
    name = _name(request)
    after = _int(request.headers.get("last-event-id") or request.query_params.get("after"), 0)
    if bin_.streams >= bin_.max_streams:
        raise TooManyRequests(
            f"{bin_.max_streams} live views are open already; close one or use "
            f"{PREFIX}/{name}/requests",
            headers={**CORS, "Retry-After": "5"},
        )
    return StreamingResponse(
        _stream(bin_, name, after), media_type="text/event-stream", headers=SSE_HEADERS
    )


async def record(request: Request) -> Response:
    """Any method on /bin/{name}[/...]: keep the request."""
    name = _name(request)
    body, size = await _read_body(request)
    entry = bin_of(request).record(
        name,
        method=request.method,
        path=request.url.path,
        query=request.url.query,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
        body=body,
        body_size=size,
    )
    return JSONResponse({"ok": True, "bin": name, "id": entry.id}, headers=CORS)


async def asset(request: Request) -> Response:
    """GET /bin/_static/{file}: the bin page's script and stylesheet."""
    found = _assets().get(request.path_params["file"])
    if found is None:
        return Response("not found", status_code=404)
    text, media_type = found
    return Response(text, media_type=media_type, headers={"Cache-Control": "no-cache"})


async def _stream(bin_: RequestBin, name: str, after: int) -> AsyncIterator[bytes]:
    """Server-Sent Events: what the bin holds after `after`, then each new request."""
    bin_.streams += 1
    try:
        yield b"retry: 1000\n\n"
        last = after
        while not bin_.closed:
            for entry in bin_.requests(name, last):
                last = entry.id
                data = msgspec.json.encode(entry)
                yield b"id: %d\nevent: request\ndata: %s\n\n" % (entry.id, data)
            await bin_.wait(HEARTBEAT_SECONDS)
            yield b": keep-alive\n\n"
    finally:
        bin_.streams -= 1


_TUPLE_SIZE = sys.getsizeof(("", ""))
_ENTRY_SIZE = 400  # the entry itself, its numbers and flags


def _header_cost(name: str, value: str) -> int:
    """The memory one kept header holds: its pair and its two strings."""
    return _TUPLE_SIZE + sys.getsizeof(name) + sys.getsizeof(value)


def _bounded_headers(headers: Iterable[tuple[str, str]]) -> tuple[list[tuple[str, str]], bool]:
    """Headers as kept: each value cut at MAX_HEADER_VALUE, at most MAX_HEADERS of them and
    MAX_HEADERS_BYTES in all (counting what each holds in memory)."""
    kept: list[tuple[str, str]] = []
    total = 0
    cut = False
    for name, value in headers:
        if len(kept) >= MAX_HEADERS:
            return kept, True
        if len(value) > MAX_HEADER_VALUE:
            value = value[:MAX_HEADER_VALUE]
            cut = True
        name = name[:MAX_HEADER_VALUE]
        total += _header_cost(name, value)
        if total > MAX_HEADERS_BYTES:
            return kept, True
        kept.append((name, value))
    return kept, cut


async def _read_body(request: Request) -> tuple[bytes, int]:
    """The first MAX_BODY bytes of the body and its full size (refused past MAX_WIRE_BODY)."""
    kept = bytearray()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_WIRE_BODY:
            raise PayloadTooLarge(f"the bin takes bodies up to {MAX_WIRE_BODY} bytes", headers=CORS)
        if len(kept) < MAX_BODY:
            kept += chunk[: MAX_BODY - len(kept)]
    return bytes(kept), size


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not NAME.match(name):
        raise BadRequest(f"bin names match {NAME.pattern}", headers=CORS)
    return name


def _wants_json(request: Request) -> bool:
    if request.query_params.get("format") == "json":
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _clock(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "—"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _resource(folder: str, name: str, package: str = "collector.tools") -> str:
    return (resources.files(package) / folder / name).read_text(encoding="utf-8")
