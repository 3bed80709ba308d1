"""The built tag, served at `GET /tag.js` with a strong ETag, a short cache life and gzip.

`TagFile()` reads it once at start-up (TagNotBuiltError if missing); the app keeps it in
`app.state.tag`, where `tag_js` finds it.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

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


class TagFile:
    """The built tag, read and compressed once, with the headers of each representation."""

    def __init__(self, path: Path = TAG_PATH) -> None:
        try:
            self.plain = path.read_bytes()
        except OSError as exc:
            raise TagNotBuiltError(f"cannot read {path}: run `npm run build` in tag/") from exc
        digest = hashlib.sha256(self.plain).hexdigest()[:32]
        # A strong ETag names one representation, so the gzip one gets its own.
        self.plain_headers = {**_COMMON_HEADERS, "ETag": f'"{digest}"'}
        self.gzip_headers = {
            **_COMMON_HEADERS, "ETag": f'"{digest}-gzip"', "Content-Encoding": "gzip"
        }
        self.compressed = gzip.compress(self.plain, compresslevel=9, mtime=0)
        self.etags = frozenset((self.plain_headers["ETag"], self.gzip_headers["ETag"]))


async def tag_js(request: Request) -> Response:
    """GET /tag.js: the tag of `request.app.state.tag`, gzipped when accepted, 304 when fresh."""
    tag: TagFile = request.app.state.tag
    headers = request.headers
    if accepts_gzip(headers.get("accept-encoding", "")):
        body, chosen = tag.compressed, tag.gzip_headers
    else:
        body, chosen = tag.plain, tag.plain_headers
    if _not_modified(headers, tag.etags):
        return Response(status_code=304, headers=_revalidation_headers(chosen))
    return Response(body, headers=chosen)


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
