"""What every dashboard page shares: the layout and its navigation, the guard, forms, redirects.

Pages answer 404 when admin is off, send the browser to the login page without the token,
refuse cross-origin changes and show HTTP errors as a page (`guarded`). Changes are plain form
posts (`read_form`) answered with a redirect carrying a notice or an error (`redirect`).
"""

from __future__ import annotations

import functools
import html
import string
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from collector.admin import auth
from collector.admin.guessing import retry_after
from collector.errors import HTTPError

Page = Callable[[Request], Awaitable[Response]]
MAX_FORM_BYTES = 256 * 1024
NAV = (
    ("/admin/", "Campaigns"),
    ("/admin/segments", "Segments"),
    ("/admin/variables", "Variables"),
    ("/admin/events", "Live events"),
    ("/admin/deliveries", "Deliveries"),
    ("/admin/users", "User lookup"),
)


@functools.cache
def layout() -> string.Template:
    """The page layout template."""
    text = (resources.files("collector.admin") / "templates" / "layout.html").read_text("utf-8")
    return string.Template(text)


def render_page(request: Request, title: str, body: str, status: int = 200) -> Response:
    """A page in the dashboard's layout, with the notice or error the redirect carried."""
    path = request.url.path
    nav = "".join(
        f'<a href="{href}"{" class=active aria-current=page" if _current(path, href) else ""}>'
        f"{label}</a>"
        for href, label in NAV
    )
    flash = ""
    if notice := request.query_params.get("notice"):
        flash = f'<div class="notice ok" role="status">{_e(notice)}</div>'
    if error := request.query_params.get("error"):
        flash = f'<div class="notice error" role="alert">{_e(error)}</div>'
    text = layout().substitute(title=_e(title), nav=nav, notice=flash, body=body)
    return HTMLResponse(text, status_code=status, headers={"Cache-Control": "no-store"})


def guarded(endpoint: Page) -> Page:
    """A page answering 404 when admin is off, sending to the login page without the token,
    refusing cross-origin changes, and showing HTTP errors as a page."""

    async def guarded_page(request: Request) -> Response:
        refused = await auth.refusal(request)
        if refused == "off":
            return plain("not found", 404)
        if refused == "unauthorized":
            return RedirectResponse("/admin/login", status_code=303)
        if refused == "cross_origin":
            return plain("cross-origin request refused", 403)
        if refused == "too_many_tries":
            wait = retry_after(auth.wait_before_trying(request))
            response = plain(f"too many wrong tokens from this address: wait {wait} s", 429)
            response.headers["Retry-After"] = wait
            return response
        try:
            return await endpoint(request)
        except HTTPError as exc:
            body = f'<div class="notice error" role="alert">{_e(exc.detail)}</div>'
            return render_page(request, "Error", body, exc.status)

    guarded_page.__name__ = endpoint.__name__
    guarded_page.__doc__ = endpoint.__doc__
    return guarded_page


def redirect(path: str, **message: str) -> Response:
    """A 303 to `path`, carrying `notice=` or `error=` for the next page to show."""
    query = urlencode(message)
    if query:
        path = f"{path}{'&' if '?' in path else '?'}{query}"
    return RedirectResponse(path, status_code=303)


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form body, decoded without extra dependencies."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    text = body[:MAX_FORM_BYTES].decode("utf-8", "replace")
    return dict(parse_qsl(text, keep_blank_values=True))


def plain(text: str, status: int) -> Response:
    """A plain-text answer."""
    return Response(text, status_code=status, media_type="text/plain")


def _current(path: str, href: str) -> bool:
    if href == "/admin/":
        return path in ("/admin/", "/admin/new") or path.startswith("/admin/campaigns")
    return path.startswith(href)


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)
