"""The admin API (`/admin/api/...`): bearer-token protected views of users and campaigns.

Without `TRIPWIRE_ADMIN_TOKEN` the admin API is off (404). The dashboard's HttpOnly cookie
carries the same token; write keys never open anything here.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from collector.errors import NotFound, Unauthorized
from collector.store.base import Store

COOKIE = "tripwire_admin"
Endpoint = Callable[[Request], Awaitable[Response]]


def authorized(request: Request, token: str) -> bool:
    """True when the request carries the admin token as a bearer header or the dashboard cookie."""
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else request.cookies.get(COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def protect(token: str | None, endpoint: Endpoint) -> Endpoint:
    """Wrap an endpoint so it answers 401 without the admin token, 404 when admin is off."""

    async def guarded(request: Request) -> Response:
        if token is None:
            raise NotFound("the admin API is off: set TRIPWIRE_ADMIN_TOKEN to turn it on")
        if not authorized(request, token):
            raise Unauthorized("admin token required: Authorization: Bearer <token>")
        return await endpoint(request)

    return guarded


def admin_routes(token: str | None, store: Store) -> list[BaseRoute]:
    """The admin API routes that read users."""

    async def user(request: Request) -> Response:
        view = await store.lookup(request.path_params["identity"], time.time())
        if view is None:
            raise NotFound(f"no user {request.path_params['identity']!r}")
        return JSONResponse(
            {"key": view.key, "profile": view.profile, "recent_events": view.recent_events}
        )

    return [
        Mount(
            "/admin/api",
            routes=[Route("/users/{identity:path}", protect(token, user))],
        )
    ]
