"""Who may use the admin API, the dashboard and `/metrics`: one check, each answering its way.

Without `TRIPWIRE_ADMIN_TOKEN` admin is off. A request carries the token as a bearer header, or
the dashboard's HttpOnly cookie holding a session id (random, never the token itself: logging
out revokes it, so a copied cookie stops working; a session is bound to the token it was made
with, so changing the token ends it, in every process); a change (any method but GET, HEAD,
OPTIONS) that a browser says comes from another origin is refused, so a forged form post cannot
use the cookie. Wrong tokens are limited per client address (`collector.admin.guessing`).

`/metrics` takes `TRIPWIRE_METRICS_TOKEN` or the admin token as a bearer header; with neither
set it is closed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal, cast

from starlette.requests import Request

from collector.admin.guessing import Guesses
from collector.runtime import Runtime

COOKIE = "tripwire_admin"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Refusal = Literal["off", "unauthorized", "cross_origin", "too_many_tries"]
Verdict = Literal["ok", "missing", "wrong", "too_many_tries"]


def runtime_of(request: Request) -> Runtime:
    """The running collector behind the app serving this request."""
    return cast(Runtime, request.app.state.runtime)


def guesses_of(request: Request) -> Guesses:
    """This app's count of wrong tokens per client address (made on first use)."""
    state = request.app.state
    guesses = getattr(state, "guesses", None)
    if guesses is None:
        guesses = state.guesses = Guesses()
    return cast(Guesses, guesses)


def client_of(request: Request) -> str:
    """The client address wrong tokens are counted against."""
    return request.client.host if request.client else ""


def token_tag(token: str) -> str:
    """What a dashboard session is bound to: derived from the token, never revealing it."""
    return hmac.new(_bytes(token), b"tripwire dashboard session", hashlib.sha256).hexdigest()


async def refusal(request: Request) -> Refusal | None:
    """Why this request may not use the admin API or dashboard, or None when it may."""
    token = runtime_of(request).settings.admin_token
    if not token:
        return "off"
    verdict = check_bearer(request, [token])
    if verdict == "too_many_tries":
        return "too_many_tries"
    if verdict == "wrong":
        return "unauthorized"
    if verdict == "missing" and not await _live_session(request, token):
        return "unauthorized"
    if request.method not in SAFE_METHODS and not same_origin(request):
        return "cross_origin"
    return None


def check_bearer(request: Request, tokens: list[str]) -> Verdict:
    """Whether the request's bearer header holds one of `tokens` (a wrong one is counted)."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() != "bearer ":
        return "missing"
    return check_token(request, header[7:].strip(), tokens)


def check_token(request: Request, given: str, tokens: list[str]) -> Verdict:
    """Whether `given` is one of `tokens`; a wrong one counts against the client address, and
    a client past its tries is refused without a check."""
    guesses = guesses_of(request)
    client = client_of(request)
    if guesses.refused(client) is not None:
        return "too_many_tries"
    if given and any(hmac.compare_digest(_bytes(given), _bytes(t)) for t in tokens if t):
        return "ok"
    guesses.failed(client)
    return "wrong"


def wait_before_trying(request: Request) -> float:
    """Seconds until this request's client may try a token again (0 when it may now)."""
    return guesses_of(request).refused(client_of(request)) or 0.0


async def _live_session(request: Request, token: str) -> bool:
    session = request.cookies.get(COOKIE, "")
    return bool(session) and await runtime_of(request).sessions.valid(session, token_tag(token))


def _bytes(text: str) -> bytes:
    # header values arrive as latin-1 text; any character must compare, never raise
    return text.encode("utf-8", "surrogatepass")


def valid_token(request: Request, given: str) -> Verdict:
    """Whether `given` (typed on the login form) is the admin token."""
    token = runtime_of(request).settings.admin_token
    if not token:
        return "wrong"
    return check_token(request, given, [token])


def same_origin(request: Request) -> bool:
    """False when a browser says the request comes from another origin (a forged form post)."""
    origin = request.headers.get("origin")
    if origin is None or request.headers.get("authorization"):
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"
