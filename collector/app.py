"""The collector's ASGI application: every route, and a lifespan that owns clients and tasks.

`create_app(settings)` wires the parts together: ingest → store (engine inside) → outbox →
delivery, with the admin API, the dashboard and the request bin beside them; `create_bin_app`
is the standalone request bin. This is the one place routes are assembled: the endpoints are
plain functions in their modules, reading what they need from `request.app.state` (`runtime`,
`registry`, `request_bin`). Nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any, Final

import msgspec
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ExceptionHandler, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from collector import __version__
from collector.admin import api, audiences, auth, builder, dashboard
from collector.admin.guessing import weakness
from collector.config.settings import Settings
from collector.errors import ConfigError, HTTPError, NotFound, Unauthorized
from collector.ingest.endpoints import INGEST_PREFIXES, IngestApp
from collector.ingest.tagfile import TagFile, tag_js
from collector.ingest.verification import IdentityCheck
from collector.metrics import IngestMetrics, render
from collector.runtime import Runtime
from collector.security import SecurityHeaders
from collector.tools import requestbin
from collector.tools.requestbin import RequestBin

log = logging.getLogger("tripwire")


class CollectorApp:
    """The outer ASGI app: ingest requests go straight to the ingest app, the rest to Starlette.

    Ingest is the hot path; skipping Starlette's middleware and router for it is measurable.
    """

    def __init__(self, ingest: IngestApp, app: Starlette) -> None:
        self.ingest = ingest
        self.app = app
        self.state = app.state

    def begin_shutdown(self) -> None:
        """End live streams (admin events, request bin) so the server can stop without waiting."""
        self.state.runtime.begin_shutdown()
        if self.state.request_bin is not None:
            self.state.request_bin.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route one ASGI connection."""
        if scope["type"] == "http" and scope["path"].startswith(INGEST_PREFIXES):
            await self.ingest(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def proxy_headers() -> Middleware:
    """A client's address, where the admin side counts wrong tokens by it, is the one a trusted
    proxy names in X-Forwarded-For (FORWARDED_ALLOW_IPS, by default loopback), as uvicorn would
    give it. Read here rather than by uvicorn for every request: ingest never reads it."""
    return Middleware(
        ProxyHeadersMiddleware, trusted_hosts=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
    )


# The cyclic garbage collector's thresholds while serving (Python's defaults: 700, 10, 10).
GC_THRESHOLDS: Final = (10_000, 20, 50)


def settle_gc() -> None:
    """Set the cyclic garbage collector for a long-lived server, once start-up is done.

    Nearly everything a request allocates dies with it by reference counting; the cyclic collector
    is only needed for the few cycles. At Python's default thresholds (700, 10, 10) it runs a young
    collection about every request and a full one, which scans everything the store holds, each
    time the survivors grow by a quarter: through the ingest pipeline in process (60,000 page
    views from new visitors) 637 young, 57 middle and 4 full collections, the longest 32 ms, 2.8 %
    of the CPU. At (10,000, 20, 50): 43 young, 2 middle and no full one, 1.3 %. What start-up
    built (modules, compiled rules, clients, loaded profiles) lives as long as the process: it is
    frozen, left out of every later collection, once per process (delivery does it when it
    starts, after the store is loaded).
    """
    gc.set_threshold(*GC_THRESHOLDS)
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def create_app(settings: Settings) -> CollectorApp:
    """Build the collector app for these settings."""
    warn_about_weak_tokens(settings)
    registry = CollectorRegistry(auto_describe=True)
    metrics = IngestMetrics(registry)
    runtime = Runtime(settings, registry, metrics)
    identity = settings.config.identity
    ingest = IngestApp(
        settings.config.write_keys,
        settings.config.allowed_origins,
        runtime.accept,
        metrics,
        IdentityCheck(identity),
        identity.server_write_keys,
    )
    tag = TagFile()
    bin_settings = settings.config.request_bin
    request_bin = (
        RequestBin(bin_settings.max_requests, max_streams=settings.config.server.max_streams)
        if settings.request_bin or bin_settings.enabled
        else None
    )
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/tag.js", tag_js, methods=["GET", "HEAD"], name="tag_js"),
        *ADMIN_API_ROUTES,
        *DASHBOARD_ROUTES,
    ]
    if request_bin is not None:
        routes.append(BIN_ROUTES)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            await runtime.start()
        except ConfigError as exc:
            # found only when opening what the data directory holds (a legacy file that is a
            # directory, say): one line and status 2, like every other start-up error
            for problem in exc.problems:
                sys.stderr.write(f"{problem}\n")
            sys.stderr.flush()
            os._exit(2)
        settle_gc()
        try:
            yield
        finally:
            await runtime.stop()
            if runtime.stop_error is not None:
                # uvicorn ends the process with the stop signal's own status after a clean
                # stop; a stop that lost changes must say so with its exit status
                sys.stderr.write(f"tripwire: {runtime.stop_error}\n")
                sys.stderr.flush()
                os._exit(1)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[proxy_headers(), Middleware(SecurityHeaders)],
    )
    app.state.runtime = runtime
    app.state.registry = registry
    app.state.tag = tag
    app.state.request_bin = request_bin
    return CollectorApp(ingest, app)


def warn_about_weak_tokens(settings: Settings) -> None:
    """Log a warning for an admin or metrics token that is easy to guess."""
    for name, token in (("TRIPWIRE_ADMIN_TOKEN", settings.admin_token),
                        ("TRIPWIRE_METRICS_TOKEN", settings.metrics_token)):
        reason = weakness(token) if token else None
        if reason is not None:
            log.warning(
                "%s is easy to guess (%s): anyone who guesses it %s; use a long random one, "
                "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'",
                name, reason,
                "controls every campaign" if name == "TRIPWIRE_ADMIN_TOKEN" else "reads /metrics",
            )


def create_bin_app(request_bin: RequestBin) -> Starlette:
    """The standalone request bin (`tripwire bin`)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        request_bin.close()

    routes: list[BaseRoute] = [Route("/", to_bins), Route("/healthz", bin_healthz), BIN_ROUTES]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(SecurityHeaders)],
    )
    app.state.request_bin = request_bin
    return app


# -- the routes ------------------------------------------------------------------------------

ADMIN_API_ROUTES: list[BaseRoute] = [
    Mount(
        "/admin/api",
        routes=[
            Route("/openapi.json", api.openapi, methods=["GET"]),
            Route("/campaigns", api.list_campaigns, methods=["GET"]),
            Route("/campaigns/{id}", api.get_campaign, methods=["GET"]),
            Route("/campaigns/{id}", api.put_campaign, methods=["PUT"]),
            Route("/campaigns/{id}", api.patch_campaign, methods=["PATCH"]),
            Route("/campaigns/{id}", api.delete_campaign, methods=["DELETE"]),
            Route("/campaigns/{id}/test", api.fire_test, methods=["POST"]),
            Route("/campaigns/{id}/results", api.results, methods=["GET"]),
            Route("/campaigns/{id}/resume", api.resume_campaign, methods=["POST"]),
            Route("/campaigns/{id}/dry-run", audiences.campaign_dry_run, methods=["POST"]),
            *(
                route
                for kind in ("variables", "segments")
                for route in (
                    Route(f"/{kind}", audiences.list_definitions, methods=["GET"]),
                    Route(f"/{kind}/{{name}}", audiences.get_definition, methods=["GET"]),
                    Route(f"/{kind}/{{name}}", audiences.put_definition, methods=["PUT"]),
                    Route(f"/{kind}/{{name}}", audiences.delete_definition, methods=["DELETE"]),
                )
            ),
            Route("/segments/{name}/reach", audiences.segment_reach, methods=["GET"]),
            Route("/reach", audiences.draft_reach, methods=["POST"]),
            Route("/vocabulary", audiences.vocabulary, methods=["GET"]),
            Route("/campaign-text", audiences.campaign_text, methods=["POST"]),
            Route("/paused", api.paused_endpoints, methods=["GET"]),
            Route("/users/{identity:path}", api.user, methods=["GET"]),
            Route("/deliveries", api.deliveries, methods=["GET"]),
            Route("/deliveries/{id}/replay", api.replay, methods=["POST"]),
            Route("/events/stream", api.events, methods=["GET"]),
        ],
    )
]

DASHBOARD_ROUTES: list[BaseRoute] = [
    Route("/admin", dashboard.to_index),
    Route("/favicon.ico", dashboard.favicon, methods=["GET", "HEAD"]),
    Mount(
        "/admin",
        routes=[
            Route("/login", dashboard.login, methods=["GET", "POST"]),
            Route("/logout", dashboard.logout, methods=["POST"]),
            Route("/static/{file}", dashboard.asset, methods=["GET", "HEAD"]),
            Route("/", dashboard.campaigns, methods=["GET"]),
            Route("/new", dashboard.editor, methods=["GET"]),
            Route("/campaigns", dashboard.save, methods=["POST"]),
            Route("/campaigns/{id}", dashboard.editor, methods=["GET"]),
            Route("/campaigns/{id}", dashboard.save, methods=["POST"]),
            Route("/campaigns/{id}/status", dashboard.set_status, methods=["POST"]),
            Route("/campaigns/{id}/delete", dashboard.delete, methods=["POST"]),
            Route("/campaigns/{id}/test", dashboard.fire_test, methods=["POST"]),
            Route("/campaigns/{id}/resume", dashboard.resume, methods=["POST"]),
            Route("/events", dashboard.events, methods=["GET"]),
            Route("/deliveries", dashboard.deliveries, methods=["GET"]),
            Route("/deliveries/{id}/replay", dashboard.replay, methods=["POST"]),
            Route("/users", dashboard.users, methods=["GET"]),
            *(
                route
                for kind in ("variables", "segments")
                for route in (
                    Route(f"/{kind}", builder.list_page, methods=["GET"]),
                    Route(f"/{kind}", builder.save_page, methods=["POST"]),
                    Route(f"/{kind}/new", builder.form_page, methods=["GET"]),
                    Route(f"/{kind}/{{name}}", builder.form_page, methods=["GET"]),
                    Route(f"/{kind}/{{name}}", builder.save_page, methods=["POST"]),
                    Route(f"/{kind}/{{name}}/delete", builder.delete_page, methods=["POST"]),
                )
            ),
        ],
    ),
]

BIN_ROUTES = Mount(
    requestbin.PREFIX,
    routes=[
        Route("/", requestbin.index, methods=["GET", "HEAD"]),
        Route("/_static/{file}", requestbin.asset, methods=["GET", "HEAD"]),
        Route("/{name}/view", requestbin.view, methods=["GET", "HEAD"]),
        Route("/{name}/requests", requestbin.feed, methods=["GET", "HEAD"]),
        Route("/{name}/stream", requestbin.stream, methods=["GET"]),
        Route("/{name}", requestbin.record, methods=requestbin.ALL_METHODS),
        Route("/{name}/{rest:path}", requestbin.record, methods=requestbin.ALL_METHODS),
    ],
)


# -- the collector's own endpoints -----------------------------------------------------------


async def healthz(_: Request) -> Response:
    """GET /healthz: the process is up."""
    return JSONResponse({"status": "ok", "version": __version__})


READY_SECONDS = 2.0  # /readyz answers within this, whatever the store does


async def readyz(request: Request) -> Response:
    """GET /readyz: the store answers and the data directory takes writes (503, with why),
    within READY_SECONDS: a frozen store is not ready, and a probe gets its answer in time."""
    try:
        async with asyncio.timeout(READY_SECONDS):
            reason = await request.app.state.runtime.unready_reason()
    except TimeoutError:
        reason = f"the store did not answer within {READY_SECONDS:g} s"
    if reason is None:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False, "reason": reason}, status_code=503)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: Prometheus metrics, for a bearer of the metrics or the admin token."""
    settings = request.app.state.runtime.settings
    tokens = [t for t in (settings.metrics_token, settings.admin_token) if t]
    if not tokens:
        raise NotFound("/metrics is off: set TRIPWIRE_METRICS_TOKEN to turn it on")
    verdict = auth.check_bearer(request, tokens)
    if verdict == "too_many_tries":
        raise api.too_many_tries(request)
    if verdict != "ok":
        raise Unauthorized(
            "metrics token required: Authorization: Bearer <TRIPWIRE_METRICS_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    await request.app.state.runtime.refresh_results()  # A/B results live in the store
    body = render(request.app.state.registry)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def to_bins(_: Request) -> Response:
    """GET / on the standalone bin: on to the list of bins."""
    return RedirectResponse("/bin/", status_code=303)


async def bin_healthz(_: Request) -> Response:
    """GET /healthz on the standalone bin."""
    return JSONResponse({"status": "ok"})


async def render_error(_: Request, exc: Exception) -> Response:
    """Every HTTPError answered alike: its status, headers and its `payload()` body."""
    assert isinstance(exc, HTTPError)
    return JSONResponse(exc.payload(), status_code=exc.status, headers=dict(exc.headers))


EXCEPTION_HANDLERS: dict[Any, ExceptionHandler] = {HTTPError: render_error}


SETTINGS_ENV = "TRIPWIRE_SETTINGS_JSON"


def app_from_environment() -> CollectorApp:
    """App factory for uvicorn worker processes: settings arrive as JSON from the parent."""
    from collector.config.schema import decode_hook

    raw = os.environ[SETTINGS_ENV]
    settings = msgspec.json.decode(raw, type=Settings, dec_hook=decode_hook)
    from collector.server import configure

    configure(settings.config.server)  # this worker process's connection deadlines
    return create_app(settings)
