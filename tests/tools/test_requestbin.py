"""The request bin: records any request, lists bins, streams them live; standalone and mounted."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright
from starlette.applications import Starlette

from collector.app import create_bin_app
from collector.tools.requestbin import (
    MAX_BIN_BYTES,
    MAX_BODY,
    MAX_HEADER_VALUE,
    RequestBin,
    _stream,
)
from tests.support.paths import ARTIFACTS
from tests.support.poll import wait_until
from tests.support.ports import free_port
from tests.support.server import run_tripwire, stop_process

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-gpu",
    "--disable-component-update", "--no-first-run",
]


def client_for(app: Starlette) -> httpx.AsyncClient:
    """An HTTP client talking to the app in-process."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bin.test")


async def test_any_method_and_sub_path_is_recorded_and_answered_200() -> None:
    app = create_bin_app(RequestBin(max_requests=10))
    async with client_for(app) as client:
        posted = await client.post(
            "/bin/orders/created?src=shop", json={"order": 42}, headers={"X-Trace": "abc"}
        )
        deleted = await client.delete("/bin/orders")
        fetched = await client.get("/bin/orders/requests")
    assert posted.status_code == 200 and posted.json()["ok"] is True
    assert deleted.status_code == 200
    newest, oldest = fetched.json()["requests"]
    assert newest["method"] == "DELETE" and newest["path"] == "/bin/orders"
    assert oldest["method"] == "POST"
    assert oldest["path"] == "/bin/orders/created"
    assert oldest["query"] == "src=shop"
    assert json.loads(oldest["body"]) == {"order": 42}
    assert ["x-trace", "abc"] in oldest["headers"]
    assert oldest["at"] > 0


async def test_each_bin_keeps_only_its_newest_requests_and_body_prefix() -> None:
    app = create_bin_app(RequestBin(max_requests=3))
    async with client_for(app) as client:
        for number in range(5):
            await client.post("/bin/a", content=f"request {number}")
        await client.post("/bin/b", content=b"x" * (MAX_BODY + 10))
        await client.put("/bin/c", content=b"\xff\xfe binary")
        a = (await client.get("/bin/a/requests")).json()["requests"]
        b = (await client.get("/bin/b/requests")).json()["requests"]
        c = (await client.get("/bin/c/requests")).json()["requests"]
        since = (await client.get(f"/bin/a/requests?after={a[1]['id']}")).json()["requests"]
    assert [r["body"] for r in a] == ["request 4", "request 3", "request 2"]
    assert [r["body"] for r in since] == ["request 4"]
    assert b[0]["truncated"] is True
    assert b[0]["body_size"] == MAX_BODY + 10 and len(b[0]["body"]) == MAX_BODY
    assert c[0]["body_base64"] is True


async def test_huge_headers_and_bodies_are_kept_within_a_byte_budget() -> None:
    bin_ = RequestBin(max_requests=200)
    app = create_bin_app(bin_)
    async with client_for(app) as client:
        await client.post("/bin/h", content="x", headers={"X-Big": "y" * 4_000_000})
        for _ in range(100):
            await client.post("/bin/h", content=b"z" * 60_000)
        kept = (await client.get("/bin/h/requests")).json()["requests"]
    held = sum(len(r["body"]) + sum(len(k) + len(v) for k, v in r["headers"]) for r in kept)
    assert held <= MAX_BIN_BYTES
    assert 1 < len(kept) < 100  # the oldest went to make room
    big = bin_.record("g", method="GET", path="/", query="", headers=[("x", "y" * 10**6)], body=b"")
    assert big.headers_truncated and len(big.headers[0][1]) == MAX_HEADER_VALUE


async def test_live_views_are_capped() -> None:
    bin_ = RequestBin(max_streams=2)
    open_streams = [_stream(bin_, "s", 0) for _ in range(2)]
    for stream in open_streams:
        await anext(stream)
    async with client_for(create_bin_app(bin_)) as client:
        refused = await client.get("/bin/s/stream")
        assert refused.status_code == 429 and "/bin/s/requests" in refused.json()["detail"]
        await open_streams[0].aclose()
        bin_.close()  # the next stream ends at once instead of waiting for requests
        allowed = await client.get("/bin/s/stream")
    assert allowed.status_code == 200
    await open_streams[1].aclose()


async def test_the_index_lists_bins_and_a_bad_name_is_refused() -> None:
    app = create_bin_app(RequestBin())
    async with client_for(app) as client:
        await client.post("/bin/first", content="1")
        await client.post("/bin/second", content="2")
        await client.post("/bin/second", content="3")
        listed = await client.get("/bin/", headers={"Accept": "application/json"})
        page = await client.get("/bin/")
        bad = await client.post("/bin/%2E%2E")
    counts = {b["name"]: b["count"] for b in listed.json()["bins"]}
    assert counts == {"first": 1, "second": 2}
    assert 'href="/bin/second/view"' in page.text
    assert bad.status_code == 400


async def test_a_page_on_another_origin_may_read_the_feed() -> None:
    app = create_bin_app(RequestBin())
    async with client_for(app) as client:
        preflight = await client.options(
            "/bin/x", headers={"Origin": "http://shop.test", "Access-Control-Request-Method": "PUT"}
        )
        feed = await client.get("/bin/x/requests", headers={"Origin": "http://shop.test"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert feed.headers["access-control-allow-origin"] == "*"


@contextlib.contextmanager
def standalone_bin() -> Iterator[str]:
    """`tripwire bin --port P` as a user runs it; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "bin", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(url, process), timeout=20, message="tripwire bin")
        yield url
    finally:
        stop_process(process, timeout=5)
        assert process.returncode == 0 or process.returncode == -15


def _up(url: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(process.stdout.read().decode() if process.stdout else "exited")
    try:
        return httpx.get(url + "/healthz", trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


def test_standalone_bin_streams_requests_live_and_stops_promptly() -> None:
    with standalone_bin() as url, httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
        client.post("/bin/hooks", json={"n": 1})
        with client.stream("GET", "/bin/hooks/stream") as stream:
            lines = stream.iter_lines()
            first = _next_request(lines)
            client.post("/bin/hooks/later", json={"n": 2})
            second = _next_request(lines)
    assert first["path"] == "/bin/hooks" and json.loads(first["body"]) == {"n": 1}
    assert second["path"] == "/bin/hooks/later"


def _next_request(lines: Iterator[str]) -> dict[str, Any]:
    for line in lines:
        if line.startswith("data: "):
            data: dict[str, Any] = json.loads(line[6:])
            return data
    raise AssertionError("stream ended")


def test_the_live_view_shows_requests_as_they_arrive() -> None:
    with standalone_bin() as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/bin/orders/view")
            page.wait_for_selector("#status:text('live')")
            httpx.post(f"{url}/bin/orders/paid?via=test", json={"total": 9.5}, trust_env=False)
            item = page.wait_for_selector("#requests li")
            assert item is not None
            text = item.inner_text()
            assert "POST" in text and "/bin/orders/paid?via=test" in text and '"total": 9.5' in text
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "requestbin-view.png"))
        finally:
            browser.close()


@pytest.mark.parametrize("enabled", [False, True])
def test_serve_mounts_the_bin_only_when_configured(enabled: bool) -> None:
    config = {"write_keys": ["k"], "request_bin": {"enabled": enabled}}
    with run_tripwire(config) as server:
        answer = server.client.post("/bin/demo", json={})
    assert answer.status_code == (200 if enabled else 404)


def held_in_memory(entries: list[Any]) -> int:
    """What recorded entries really hold: the entry, its strings, its header pairs."""
    total = 0
    for entry in entries:
        total += sys.getsizeof(entry) + sys.getsizeof(entry.headers)
        total += sum(sys.getsizeof(s) for s in (entry.body, entry.path, entry.query))
        total += sum(
            sys.getsizeof(pair) + sys.getsizeof(pair[0]) + sys.getsizeof(pair[1])
            for pair in entry.headers
        )
    return total


async def test_many_tiny_headers_cannot_hold_more_than_the_bin_budget() -> None:
    bin_ = RequestBin(max_requests=200)
    app = create_bin_app(bin_)
    tiny = [(f"x{n}", "y") for n in range(1000)]
    async with client_for(app) as client:
        for _ in range(30):
            await client.post("/bin/tiny", content=b"z", headers=tiny)
    kept = bin_.requests("tiny")
    assert kept and all(r.headers_truncated for r in kept)
    assert held_in_memory(kept) <= MAX_BIN_BYTES * 1.2, held_in_memory(kept)
