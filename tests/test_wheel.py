"""The wheel is complete: installed without the checkout, `tripwire serve` serves the tag."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.poll import wait_until
from tests.support.ports import free_port
from tests.support.server import stop_process

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "tag" / "dist" / "tripwire.min.js"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel built from this source installed in it (not editable)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "collector", source / "collector",
                    ignore=shutil.ignore_patterns("__pycache__"))
    wheels = work / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = wheels.glob("tripwire-*.whl")
    target = work / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # The dependencies come from the test environment (only the wheel itself is installed):
    # its site-packages joins the path after the fresh venv's own, without running its .pth
    # files, so the checkout's editable install stays out.
    Path(site, "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    yield target


def _outside() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    env["PYTHONPATH"] = ""
    return env


def test_the_wheel_carries_the_tag_and_the_dashboard_files(installed: Path) -> None:
    site = Path(
        subprocess.run(
            [installed / "bin" / "python", "-c",
             "import collector, pathlib; print(pathlib.Path(collector.__file__).parent)"],
            check=True, capture_output=True, text=True, cwd="/",
        ).stdout.strip()
    )
    assert site.is_relative_to(installed), f"collector imported from {site}, not the wheel"
    assert (site / "ingest" / "static" / "tripwire.min.js").read_bytes() == DIST.read_bytes()
    assert (site / "admin" / "templates" / "layout.html").is_file()


def test_tripwire_serve_from_the_wheel_serves_the_tag(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "tripwire.json"
    config.write_text('{"write_keys": ["wheel-key"]}')
    log = tmp_path / "serve.log"
    env = {**_outside(), "TRIPWIRE_ADMIN_TOKEN": "wheel-token"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [installed / "bin" / "tripwire", "serve", "--config", str(config),
             "--port", str(port), "--data-dir", str(tmp_path / "data")],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:

            def tag() -> httpx.Response | None:
                if process.poll() is not None:
                    raise AssertionError(f"tripwire serve exited:\n{log.read_text()}")
                try:
                    return client.get("/tag.js")
                except httpx.TransportError:
                    return None

            response = wait_until(tag, timeout=30, message="tripwire serve from the wheel")
            assert response.status_code == 200
            assert response.content == DIST.read_bytes()
            login = client.get("/admin/login")
            assert login.status_code == 200 and "token" in login.text.lower()
    finally:
        stop_process(process)  # type: ignore[arg-type]


def test_tripwire_demo_from_the_wheel_says_where_the_shop_is(
    installed: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [installed / "bin" / "tripwire", "demo", "--no-browser",
         "--port", str(free_port()), "--site-port", str(free_port())],
        capture_output=True, text=True, cwd=tmp_path, env=_outside(), timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "demo_site" in result.stderr and "--site-dir" in result.stderr
