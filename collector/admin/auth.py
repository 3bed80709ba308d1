"""Who may use the admin API and the dashboard: one check, answered in each one's manner.

Without `TRIPWIRE_ADMIN_TOKEN` both are off. A request carries the token as a bearer header, or
the dashboard's HttpOnly cookie holding a session id (random, never the token itself: logging
out revokes it, so a copied cookie stops working); a change (any method but GET, HEAD, OPTIONS)
that a browser says comes from another origin is refused, so a forged form post cannot use the
cookie.
"""

from __future__ import annotations

import hmac
from typing import Literal, cast

from starlette.requests import Request

from collector.runtime import Runtime

COOKIE = "tripwire_admin"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Refusal = Literal["off", "unauthorized", "cross_origin"]


def runtime_of(request: Request) -> Runtime:
    """The running collector behind the app serving this request."""
    return cast(Runtime, request.app.state.runtime)


async def refusal(request: Request) -> Refusal | None:
    """Why this request may not use the admin API or dashboard, or None when it may."""
    token = runtime_of(request).settings.admin_token
    if not token:
        return "off"
    if not await authorized(request, token):
        return "unauthorized"
    if request.method not in SAFE_METHODS and not same_origin(request):
        return "cross_origin"
    return None


async def authorized(request: Request, token: str) -> bool:
    """True when the request carries the admin token as a bearer header, or a live session."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        given = header[7:].strip()
        return bool(given) and hmac.compare_digest(_bytes(given), _bytes(token))
    session = request.cookies.get(COOKIE, "")
    return bool(session) and await runtime_of(request).sessions.valid(session)


def _bytes(text: str) -> bytes:
    # header values arrive as latin-1 text; any character must compare, never raise
    return text.encode("utf-8", "surrogatepass")


def valid_token(request: Request, given: str) -> bool:
    """True when `given` (typed on the login form) is the admin token."""
    token = runtime_of(request).settings.admin_token
    if not token or not given:
        return False
    return hmac.compare_digest(_bytes(given), _bytes(token))


def same_origin(request: Request) -> bool:
    """False when a browser says the request comes from another origin (a forged form post)."""
    origin = request.headers.get("origin")
    if origin is None or request.headers.get("authorization"):
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"
