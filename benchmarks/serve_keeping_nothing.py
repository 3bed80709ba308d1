"""`tripwire serve` in memory mode without a data directory: bench_durability's baseline.

    python -m benchmarks.serve_keeping_nothing --config FILE --port N

The same app and uvicorn options as `tripwire serve`, but nothing is written, so a restart
starts empty. It is not a mode for users, only the figure the data directory's cost is read
against.
"""

from __future__ import annotations

import argparse

import msgspec
import uvicorn

from collector.app import create_app
from collector.cli import UVICORN_OPTIONS, server_options
from collector.config.settings import build_settings


def main() -> None:
    """Serve the config on the port, keeping nothing."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = build_settings({"config_path": args.config, "port": args.port})
    settings = msgspec.structs.replace(settings, data_dir=None)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        **UVICORN_OPTIONS,
        **server_options(settings.config.server),
    )


if __name__ == "__main__":
    main()
