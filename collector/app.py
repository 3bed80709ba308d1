"""The collector's ASGI application: routes, and a lifespan that owns every client and task.

`create_app(settings)` wires the parts together: ingest → store (engine inside) → outbox →
delivery. Nothing is created at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence

import msgspec
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from collector import __version__
from collector.config.settings import Settings
from collector.errors import HTTPError
from collector.events import Event
from collector.ingest.endpoints import IngestApp
from collector.ingest.tagfile import tag_route
from collector.metrics import IngestMetrics, render
from collector.runtime import Runtime

log = logging.getLogger("tripwire")


class CollectorApp:
    """The outer ASGI app: ingest requests go straight to the ingest app, the rest to Starlette.

    Ingest is the hot path; skipping Starlette's middleware and router for it is measurable.
    """

    def __init__(self, ingest: IngestApp, app: Starlette) -> None:
        self.ingest = ingest
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route one ASGI connection."""
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.ingest(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(settings: Settings) -> CollectorApp:
    """Build the collector app for these settings."""
    registry = CollectorRegistry(auto_describe=True)
    metrics = IngestMetrics(registry)
    runtime = Runtime(settings, registry, metrics)

    async def accept(events: Sequence[Event], now: float) -> Sequence[tuple[int, str]]:
        return await runtime.accept(events, now)

    ingest = IngestApp(settings.config.write_keys, settings.config.allowed_origins, accept, metrics)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(_: Request) -> Response:
        ready = await runtime.ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def metrics_endpoint(_: Request) -> Response:
        await runtime.refresh_results()
        return Response(render(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        tag_route(),
        *runtime.extra_routes(),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPError: _render_error})
    app.state.runtime = runtime
    return CollectorApp(ingest, app)


async def _render_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    headers = dict(exc.headers)
    return JSONResponse(
        {"error": exc.code, "detail": exc.detail}, status_code=exc.status, headers=headers
    )


SETTINGS_ENV = "TRIPWIRE_SETTINGS_JSON"


def app_from_environment() -> CollectorApp:
    """App factory for uvicorn worker processes: settings arrive as JSON from the parent."""
    from collector.config.schema import decode_hook

    raw = os.environ[SETTINGS_ENV]
    settings = msgspec.json.decode(raw, type=Settings, dec_hook=decode_hook)
    from collector.server import configure

    configure(settings.config.server)  # this worker process's connection deadlines
    return create_app(settings)
