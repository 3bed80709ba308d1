"""The `tripwire` command: serve, worker, demo, check, replay, export, bin."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from collector import __version__
from collector.config.checks import check_store, config_warnings
from collector.config.schema import ServerSettings
from collector.config.settings import Settings, build_settings, check_serving, load_config
from collector.errors import ConfigError

UVICORN_OPTIONS: dict[str, Any] = {
    "log_level": "warning",
    "access_log": False,
    "loop": "uvloop",
    "timeout_graceful_shutdown": 10,
    "server_header": False,  # answers do not name the server software (nor pay for the header)
    "proxy_headers": False,  # read by the app, on the routes that use the client's address
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `tripwire` command line."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        result: int = args.run(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tripwire", description="Website behaviour to webhooks.")
    parser.add_argument("--version", action="version", version=f"tripwire {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the collector")
    _server_options(serve)
    serve.add_argument("--workers", type=int, help="collector processes (default 1)")
    serve.set_defaults(run=_serve)

    worker = commands.add_parser("worker", help="deliver webhooks from a shared Redis store")
    worker.add_argument(
        "--config", dest="config_path", help="tripwire.yaml (or TRIPWIRE_CONFIG_PATH)"
    )
    worker.add_argument("--store", help="redis://host:port/db (or TRIPWIRE_STORE)")
    worker.add_argument(
        "--concurrency", type=int, help="requests in flight per endpoint (default from config)"
    )
    worker.set_defaults(run=_worker)

    check = commands.add_parser("check", help="validate a config file")
    check.add_argument("config", help="tripwire.yaml or .json")
    check.set_defaults(run=_check)

    replay = commands.add_parser("replay", help="run recorded events through the engine offline")
    replay.add_argument("events", help="Segment-spec JSON lines")
    replay.add_argument("--config", required=True)
    replay.add_argument("--json", action="store_true", help="print JSON instead of a table")
    replay.add_argument(
        "--show-webhooks", action="store_true",
        help="also print each request that would have been sent (method, URL, body)",
    )
    replay.set_defaults(run=_replay)

    demo = commands.add_parser("demo", help="run the demo: collector, request bin, dashboard, shop")
    demo.add_argument("--port", type=int, default=8000, help="collector port (default 8000)")
    demo.add_argument("--site-port", type=int, default=8080, help="demo shop port (default 8080)")
    demo.add_argument("--no-browser", action="store_true", help="do not open the shop in a browser")
    demo.add_argument(
        "--data-dir", dest="data_dir", help="where the demo keeps state (default ./.tripwire)"
    )
    demo.add_argument(
        "--site-dir", dest="site_dir",
        help="the demo shop's directory (default: the checkout's demo_site/, else ./demo_site)",
    )
    demo.set_defaults(run=_demo)

    export = commands.add_parser(
        "export", help="print the config file with the campaign changes made while running"
    )
    export.add_argument(
        "--config", dest="config_path", help="tripwire.yaml (or TRIPWIRE_CONFIG_PATH)"
    )
    export.add_argument("--store", help="memory (default) or redis://host:port/db")
    export.add_argument(
        "--data-dir", dest="data_dir", help="memory mode's data directory (default ./.tripwire)"
    )
    export.add_argument("-o", "--output", help="write to this file instead of printing")
    export.set_defaults(run=_export)

    bin_ = commands.add_parser("bin", help="run a standalone request bin")
    bin_.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    bin_.add_argument("--port", type=int, default=9000, help="port to listen on (default 9000)")
    bin_.add_argument(
        "--max-requests", type=int, default=200, help="requests kept per bin (default 200)"
    )
    bin_.set_defaults(run=_bin)
    return parser


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", dest="config_path", help="tripwire.yaml (or TRIPWIRE_CONFIG_PATH)"
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--store", help="memory (default) or redis://host:port/db")
    parser.add_argument(
        "--data-dir", dest="data_dir", help="where memory mode keeps state (default ./.tripwire)"
    )


def _cli_values(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in names}


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from collector.app import SETTINGS_ENV, create_app
    from collector.engine.engine import compile_rules

    settings = build_settings(
        _cli_values(args, "config_path", "host", "port", "store", "data_dir", "workers"),
        verify=compile_rules,  # every problem of the file in one round
    )
    problems: list[str] = []
    check_serving(settings, problems)
    if problems:
        raise ConfigError(problems)
    _validate_rules(settings)
    if settings.workers > 1 and settings.store == "memory":
        raise ConfigError(
            ["--workers: several processes need a shared store; add --store redis://host:port/0"]
        )
    _check_port(settings)
    print(
        f"tripwire {__version__}: collecting on http://{settings.host}:{settings.port} "
        f"(store: {settings.store})",
        flush=True,
    )
    if settings.workers > 1:
        os.environ[SETTINGS_ENV] = msgspec.json.encode(settings, enc_hook=_enc).decode()
        uvicorn.run(
            "collector.app:app_from_environment",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            **UVICORN_OPTIONS,
            **server_options(settings.config.server),
        )
    else:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            **UVICORN_OPTIONS,
            **server_options(settings.config.server),
        )
    return 0


def _check_port(settings: Settings) -> None:
    from collector.demo import port_free

    if not port_free(settings.host, settings.port):
        raise ConfigError(
            [f"tripwire serve: port {settings.port} on {settings.host} is in use (by the demo or "
             f"another collector?); choose another with --port {settings.port + 1} "
             "or TRIPWIRE_PORT (and, in memory mode, another --data-dir: one process per "
             "data directory)"]
        )


def server_options(server: ServerSettings) -> dict[str, Any]:
    """uvicorn options carrying the config's connection deadlines (see `collector.server`)."""
    from collector.server import configure

    return {"http": configure(server), "timeout_keep_alive": server.keep_alive_timeout}


def _worker(args: argparse.Namespace) -> int:
    from collector.config.checks import is_redis_url
    from collector.redis.worker import run_worker

    settings = build_settings(_cli_values(args, "config_path", "store"))
    problems: list[str] = []
    check_store(settings.store, problems)
    if problems:
        raise ConfigError(problems)
    if not is_redis_url(settings.store):
        raise ConfigError(["--store: a worker needs the shared store: --store redis://host:port/0"])
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError(["--concurrency: must be at least 1"])
    print(f"tripwire {__version__}: delivering from {settings.store}", flush=True)
    try:
        import uvloop

        uvloop.run(run_worker(settings, args.concurrency))
    except ImportError:
        asyncio.run(run_worker(settings, args.concurrency))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from collector.demo import DemoOptions, run_demo

    options = DemoOptions(
        port=args.port, site_port=args.site_port, open_browser=not args.no_browser,
        data_dir=args.data_dir, site_dir=args.site_dir,
    )
    return run_demo(options)


def _export(args: argparse.Namespace) -> int:
    from collector.tools.export import run_export

    settings = build_settings(_cli_values(args, "config_path", "store", "data_dir"))
    if args.output is None:
        return run_export(settings, sys.stdout)
    with open(args.output, "w", encoding="utf-8") as out:
        return run_export(settings, out)


def _bin(args: argparse.Namespace) -> int:
    from collector.demo import run_bin

    return run_bin(args.host, args.port, args.max_requests)


def _enc(value: Any) -> Any:
    from collector.config.schema import encode_hook

    if isinstance(value, str):  # the config's str types: timezone names, windows, hours
        return str(value)
    if isinstance(value, float):  # durations
        return float(value)
    return encode_hook(value)


def _validate_rules(settings: Settings) -> None:
    from collector.engine.engine import compile_rules

    compile_rules(settings.config)
    for warning in config_warnings(settings.config):
        print(f"warning: {warning}", file=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    from collector.engine.engine import compile_rules

    config = load_config(args.config, verify=compile_rules)  # every problem in one round
    for warning in config_warnings(config):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    counts = (
        _counted(len(config.campaigns), "campaign"),
        _counted(len(config.variables), "variable"),
        _counted(len(config.segments), "segment"),
    )
    print(f"{args.config}: OK — {', '.join(counts)}")
    return 0


def _counted(n: int, noun: str) -> str:
    """`1 campaign`, `2 campaigns`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _replay(args: argparse.Namespace) -> int:
    from collector.tools.replay import run_replay

    config = load_config(args.config)
    return run_replay(
        args.events, config, as_json=args.json, out=sys.stdout, show_webhooks=args.show_webhooks
    )


if __name__ == "__main__":
    sys.exit(main())
