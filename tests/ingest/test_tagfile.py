"""GET /tag.js: the built tag with a strong ETag, cache headers, 304 and gzip."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from collector.ingest.tagfile import TAG_PATH, TagFile, TagNotBuiltError, accepts_gzip, tag_js
from tests.support.server import run_tripwire

SCRIPT = b"(function(){var tripwire='tag';})();\n" * 20


@pytest.fixture
def tag_file(tmp_path: Path) -> Path:
    path = tmp_path / "tripwire.min.js"
    path.write_bytes(SCRIPT)
    return path


def client_for(path: Path | None) -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/tag.js", tag_js, methods=["GET", "HEAD"])])
    app.state.tag = TagFile() if path is None else TagFile(path)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://collector")


async def test_serves_the_script_with_type_and_cache_headers(tag_file: Path) -> None:
    response = await client_for(tag_file).get("/tag.js", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.content == SCRIPT
    assert response.headers["content-type"] == "application/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "public, max-age=300"
    assert "content-encoding" not in response.headers
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")


async def test_gzip_when_accepted(tag_file: Path) -> None:
    client = client_for(tag_file)
    raw = await client.get("/tag.js", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.headers["vary"] == "Accept-Encoding"
    assert raw.content == SCRIPT  # httpx decoded it
    assert int(raw.headers["content-length"]) < len(SCRIPT)
    plain = await client.get("/tag.js", headers={"Accept-Encoding": "identity"})
    assert plain.headers["etag"] != raw.headers["etag"]  # two representations, two strong tags


async def test_matching_if_none_match_gets_304(tag_file: Path) -> None:
    client = client_for(tag_file)
    for encoding in ("identity", "gzip"):
        first = await client.get("/tag.js", headers={"Accept-Encoding": encoding})
        again = await client.get(
            "/tag.js",
            headers={"Accept-Encoding": encoding, "If-None-Match": first.headers["etag"]},
        )
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == first.headers["etag"]
        assert again.headers["cache-control"] == "public, max-age=300"
    weak_in_a_list = '"other", W/' + first.headers["etag"]
    several = await client.get("/tag.js", headers={"If-None-Match": weak_in_a_list})
    assert several.status_code == 304


async def test_changed_file_gets_a_new_etag_and_stale_tag_gets_200(tmp_path: Path) -> None:
    old = tmp_path / "old.js"
    new = tmp_path / "new.js"
    old.write_bytes(SCRIPT)
    new.write_bytes(SCRIPT + b"//v2\n")
    old_etag = (await client_for(old).get("/tag.js")).headers["etag"]
    response = await client_for(new).get("/tag.js", headers={"If-None-Match": old_etag})
    assert response.status_code == 200
    assert response.headers["etag"] != old_etag
    assert response.content.endswith(b"//v2\n")


async def test_file_is_read_when_the_route_is_built_not_per_request(tag_file: Path) -> None:
    client = client_for(tag_file)
    tag_file.write_bytes(b"changed")
    assert (await client.get("/tag.js")).content == SCRIPT


async def test_missing_file_fails_when_the_route_is_built(tmp_path: Path) -> None:
    with pytest.raises(TagNotBuiltError, match="npm run build"):
        TagFile(tmp_path / "missing.js")


async def test_default_path_serves_the_committed_build() -> None:
    response = await client_for(None).get("/tag.js")
    assert response.status_code == 200
    assert response.content == TAG_PATH.read_bytes()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("GZIP", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0, br", False),
        ("br, deflate", False),
        ("identity", False),
        ("", False),
    ],
)
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_the_collector_serves_the_built_tag() -> None:
    with run_tripwire() as collector:
        client = collector.client
        first = client.get("/tag.js", headers={"Accept-Encoding": "gzip"})
        assert first.status_code == 200
        assert first.content == TAG_PATH.read_bytes()
        assert first.headers["content-encoding"] == "gzip"
        assert first.headers["cache-control"] == "public, max-age=300"
        again = client.get(
            "/tag.js", headers={"Accept-Encoding": "gzip", "If-None-Match": first.headers["etag"]}
        )
        assert again.status_code == 304
