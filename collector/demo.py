"""`tripwire demo` and `tripwire bin`: what a newcomer runs first.

The demo runs two servers in one process: the collector (with the demo config, the request bin
and the dashboard) on 127.0.0.1, and the demo shop on `localhost`, a second origin, so the tag
really sends cross-origin, as it would from a customer's site. The shop's pages hold the snippet
with `http://127.0.0.1:8000`; the shop server rewrites it when the collector runs elsewhere.

Identity verification is on in the demo, as a site should run it: the shop's server makes a
member id at sign-up and signs it with the identity secret (`POST /api/signup`), and the page
passes the signature to the tag, so nobody can send events as another member.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mimetypes
import secrets
import signal
import socket
import sys
import threading
import webbrowser
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from collector.config.settings import Settings, build_settings, decode_config
from collector.errors import ConfigError
from collector.ingest.verification import user_hash
from collector.tools.requestbin import RequestBin

# The shop ships with the source, not the package: an installed wheel finds it in the current
# directory or through --site-dir.
SITE_DIR = Path(__file__).resolve().parents[1] / "demo_site"  # a checkout (editable install)
DEFAULT_COLLECTOR = "http://127.0.0.1:8000"  # as written in demo_site's pages and config
DEMO_BIN = "demo"
SERVER_OPTIONS: dict[str, Any] = {
    "log_level": "warning", "access_log": False, "lifespan": "on", "server_header": False,
    "proxy_headers": False,  # as `tripwire serve`: the app reads them where it needs them
}


class DemoOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The `tripwire demo` command line."""

    port: int = 8000
    site_port: int = 8080
    open_browser: bool = True
    data_dir: str | None = None
    site_dir: str | None = None  # default: the checkout's demo_site/, else ./demo_site


def find_site_dir(given: str | None) -> Path:
    """The demo shop's directory: as given, in this checkout, or in the current directory."""
    for candidate in ([Path(given)] if given else [SITE_DIR, Path.cwd() / "demo_site"]):
        if (candidate / "tripwire.yaml").is_file():
            return candidate
    if given:
        raise ConfigError([f"--site-dir: {given}/tripwire.yaml not found"])
    raise ConfigError(
        ["tripwire demo: the demo shop (demo_site/) comes with the source, not the package: "
         "run it in a Tripwire checkout, or pass --site-dir DIR"]
    )


def demo_settings(options: DemoOptions) -> Settings:
    """Settings for the demo collector: the demo config, the request bin, an admin token."""
    collector = f"http://127.0.0.1:{options.port}"
    cli = {"host": "127.0.0.1", "port": options.port, "data_dir": options.data_dir}
    settings = build_settings(cli)
    config_file = find_site_dir(options.site_dir) / "tripwire.yaml"
    try:
        text = config_file.read_text(encoding="utf-8")
        raw = yaml.safe_load(text.replace(DEFAULT_COLLECTOR, collector))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{config_file}: {exc}"]) from exc
    return msgspec.structs.replace(
        settings,
        config=decode_config(raw),
        config_path=str(config_file),
        admin_token=settings.admin_token or secrets.token_urlsafe(18),
        request_bin=True,
        workers=1,
    )


def site_app(site_dir: Path, collector: str, identity_secret: str | None = None) -> Starlette:
    """The demo shop: static files, clean URLs (`/cart` is cart.html), the collector URL in;
    and its server's sign-up, which makes a member id and signs it for the tag."""
    root = site_dir.resolve()

    async def signup(_: Request) -> Response:
        member = f"member-{secrets.token_hex(6)}"
        signed = user_hash(identity_secret, member) if identity_secret else None
        return JSONResponse({"userId": member, "userHash": signed})

    async def serve(request: Request) -> Response:
        found = _site_file(root, request.url.path)
        if found is None:
            return Response("Not found", status_code=404, media_type="text/plain")
        media_type = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        if media_type in ("text/html", "text/javascript", "application/javascript", "text/css"):
            text = found.read_text(encoding="utf-8")
            if collector != DEFAULT_COLLECTOR:
                text = text.replace(DEFAULT_COLLECTOR, collector)
            return Response(text, media_type=media_type, headers={"Cache-Control": "no-cache"})
        return Response(found.read_bytes(), media_type=media_type)

    return Starlette(
        routes=[
            Route("/api/signup", signup, methods=["POST"]),
            Route("/{path:path}", serve, methods=["GET", "HEAD"]),
        ]
    )


def _site_file(root: Path, path: str) -> Path | None:
    """The file for a URL path; a path with no file falls back to its nearest parent's page,
    so a single-page app's client-side routes (`/app/wishlist`) load the app (`app.html`)."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    if parts and parts[-1] == "tripwire.yaml":
        return None
    while True:
        base = root.joinpath(*parts)
        for candidate in (base, base.with_name(base.name + ".html"), base / "index.html"):
            if candidate.is_file() and candidate.resolve().is_relative_to(root):
                return candidate
        if not parts:
            return None
        parts.pop()


# -- running servers -------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by `serve_together`, not by itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signal handling to the caller (several servers share one process)."""
        yield


def server(app: Any, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server for `app` that `serve_together` can run next to others."""
    from collector.server import GuardedHttp

    return _Server(uvicorn.Config(app, host=host, port=port, http=GuardedHttp, **SERVER_OPTIONS))


async def serve_together(
    servers: Sequence[uvicorn.Server], on_stop: Any = None, on_ready: Any = None
) -> None:
    """Run servers until SIGINT/SIGTERM; `on_stop` runs first (to end live streams)."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if on_stop is not None:
            on_stop()
        for each in servers:
            if each.should_exit:
                each.force_exit = True
            each.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    tasks = [asyncio.create_task(each.serve()) for each in servers]
    try:
        while not all(each.started for each in servers):
            if any(task.done() for task in tasks):
                stop()
                break
            await asyncio.sleep(0.02)
        else:
            if on_ready is not None:
                on_ready()
        await asyncio.gather(*tasks)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def port_free(host: str, port: int) -> bool:
    """False when something listens on host:port (checked before starting, for a clear message);
    other trouble (an unknown host) is left for the server to report."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError:
        return True
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True


def run_demo(options: DemoOptions) -> int:
    """Run the collector, request bin, dashboard and demo shop until interrupted."""
    from collector.app import create_app

    for flag, port in (("--port", options.port), ("--site-port", options.site_port)):
        if not port_free("127.0.0.1", port):
            message = f"tripwire demo: port {port} is in use; choose another with {flag}"
            print(message, file=sys.stderr)
            return 1
    settings = demo_settings(options)
    collector = f"http://127.0.0.1:{options.port}"
    site = f"http://localhost:{options.site_port}/"
    app = create_app(settings)
    secrets_ = settings.config.identity.secrets
    shop = site_app(find_site_dir(options.site_dir), collector, secrets_[0] if secrets_ else None)
    servers = [
        server(app, "127.0.0.1", options.port),
        server(shop, "127.0.0.1", options.site_port),
    ]

    def ready() -> None:
        write_keys = ", ".join(settings.config.write_keys)
        print(
            "\nTripwire demo is running.\n\n"
            f"  Demo shop     {site}\n"
            f"  Request bin   {collector}/bin/{DEMO_BIN}/view\n"
            f"  Dashboard     {collector}/admin/login#token={settings.admin_token}\n"
            f"  Collector     {collector}  (write key: {write_keys})\n\n"
            "In the shop, open the cart twice, sign up, add something to the cart: the webhooks\n"
            "appear in the shop's panel and in the request bin. Press Ctrl+C to stop.\n",
            flush=True,
        )
        if options.open_browser:
            threading.Thread(target=webbrowser.open, args=(site,), daemon=True).start()

    asyncio.run(serve_together(servers, app.begin_shutdown, ready))
    return 0


def run_bin(host: str, port: int, max_requests: int) -> int:
    """Run the standalone request bin until interrupted."""
    if not port_free(host, port):
        print(f"tripwire bin: port {port} is in use; choose another with --port", file=sys.stderr)
        return 1
    from collector.app import create_bin_app

    bin_ = RequestBin(max_requests)
    base = f"http://{host}:{port}/bin"

    def ready() -> None:
        print(
            f"Tripwire request bin on {base}/ — send any request to {base}/NAME, "
            f"watch it at {base}/NAME/view. Ctrl+C stops.",
            flush=True,
        )

    asyncio.run(serve_together([server(create_bin_app(bin_), host, port)], bin_.close, ready))
    return 0
