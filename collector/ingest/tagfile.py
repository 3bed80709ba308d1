"""The built tag, served at `GET /tag.js` with a strong ETag, a short cache life and gzip."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from collector.errors import TripwireError

# The tag build (`npm run build` in tag/) writes this copy next to tag/dist/, so wheels carry it.
TAG_PATH = Path(__file__).resolve().parent / "static" / "tripwire.min.js"

_COMMON_HEADERS = {
    "Content-Type": "application/javascript; charset=utf-8",
    "Cache-Control": "public, max-age=300",
    "Vary": "Accept-Encoding",
    "X-Content-Type-Options": "nosniff",
    "Access-Control-Allow-Origin": "*",
}


class TagNotBuiltError(TripwireError):
    """The built tag file is missing or unreadable."""


def tag_route(path: Path = TAG_PATH) -> Route:
    """Build the `GET /tag.js` route; the file is read and compressed once, here."""
    try:
        plain = path.read_bytes()
    except OSError as exc:
        raise TagNotBuiltError(f"cannot read {path}: run `npm run build` in tag/") from exc
    digest = hashlib.sha256(plain).hexdigest()[:32]
    # A strong ETag names one representation, so the gzip one gets its own.
    plain_headers = {**_COMMON_HEADERS, "ETag": f'"{digest}"'}
    gzip_headers = {**_COMMON_HEADERS, "ETag": f'"{digest}-gzip"', "Content-Encoding": "gzip"}
    compressed = gzip.compress(plain, compresslevel=9, mtime=0)
    etags = frozenset((plain_headers["ETag"], gzip_headers["ETag"]))

    async def tag_js(request: Request) -> Response:
        headers = request.headers
        if accepts_gzip(headers.get("accept-encoding", "")):
            body, chosen = compressed, gzip_headers
        else:
            body, chosen = plain, plain_headers
        if _not_modified(headers, etags):
            return Response(status_code=304, headers=_revalidation_headers(chosen))
        return Response(body, headers=chosen)

    return Route("/tag.js", tag_js, methods=["GET", "HEAD"], name="tag_js")


def accepts_gzip(accept_encoding: str) -> bool:
    """Tell whether an Accept-Encoding header value admits gzip (a q of 0 refuses it)."""
    for item in accept_encoding.split(","):
        coding, *params = item.split(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        return quality > 0
    return False


def _not_modified(headers: Headers, etags: frozenset[str]) -> bool:
    """If-None-Match uses the weak comparison: `W/` prefixes are ignored."""
    value = headers.get("if-none-match")
    if value is None:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in value.split(",")}
    return "*" in candidates or not candidates.isdisjoint(etags)


def _revalidation_headers(headers: dict[str, str]) -> dict[str, str]:
    """A 304 repeats only what refreshes the cached copy (RFC 9110 §15.4.5)."""
    return {name: headers[name] for name in ("ETag", "Cache-Control", "Vary")}
