"""The `hybrid-router` command: serve | simulate | demo | estimate | check-config | init | healthcheck."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from router.core.errors import ConfigError
from router.core.settings import (
    DEFAULT_CONFIG,
    DEFAULT_POLICIES,
    DEFAULT_PRICING,
    Settings,
    load_settings,
    packaged,
    starter_files,
)
from router.telemetry.logs import configure_logging


def _config_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def _serve_overrides(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """CLI flags as a settings tree (they win over file and env)."""
    over: dict[str, Any] = {}
    if args.host is not None:
        over["host"] = args.host
    if args.port is not None:
        over["port"] = args.port
    if args.upstream_url:
        upstreams = [msgspec.to_builtins(u) for u in settings.upstreams]
        target = next((u for u in upstreams if u.get("kind", "openai") == "openai"), upstreams[0])
        target["base_url"] = args.upstream_url
        over["upstreams"] = upstreams
    batch: dict[str, Any] = {}
    if args.batch_max_wait is not None:
        batch["max_wait_s"] = args.batch_max_wait
    if args.poll_interval is not None:
        batch["poll_interval_s"] = args.poll_interval
    if batch:
        over["batch"] = batch
    return over


def load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from the config file, the environment and `overrides`."""
    return load_settings(_config_path(args.config), os.environ, overrides)


@contextlib.contextmanager
def redis_for(settings: Settings) -> Iterator[Settings]:
    """The settings with a Redis URL: the configured one, else a bundled redis-server started for the duration."""
    if settings.redis_url:
        yield settings
        return
    from router.ops.embedded import embedded_redis

    with embedded_redis(Path(settings.data_dir)) as url:
        yield msgspec.structs.replace(settings, redis_url=url)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the router until interrupted."""
    from router.http.app import create_app
    from router.http.edge import bounded_protocol
    from router.ops.serving import Server, server_config

    base = load(args)
    settings = load(args, _serve_overrides(args, base))
    if settings.auth == "none" and not is_loopback(settings.host):
        if not args.insecure_no_auth:
            raise ConfigError(
                "--host",
                settings.host,
                "auth is 'none', so anyone who reaches this address spends your upstream key; configure "
                "`auth: keys`, or pass --insecure-no-auth to listen there anyway",
            )
        logging.getLogger(__name__).warning("auth is 'none' and the router listens on %s (--insecure-no-auth)",
                                            settings.host)  # fmt: skip
    if settings.metrics_token_env is None and not is_loopback(settings.host):
        if not args.insecure_no_auth:
            raise ConfigError(
                "metrics_token_env",
                None,
                "`/metrics` shows every tenant's spend, so beyond loopback it needs a bearer token: set "
                "`metrics_token_env` to the variable that holds one, or pass --insecure-no-auth to leave it open",
            )
        logging.getLogger(__name__).warning("/metrics is open on %s (--insecure-no-auth)", settings.host)
    workers = args.workers
    with redis_for(settings) as ready:
        if workers > 1:
            from router.ops.workers import Supervisor

            where = f"http://{ready.host}:{ready.port}/v1"
            print(f"hybrid-router listening on {where} ({workers} workers)", file=sys.stderr)
            return Supervisor(ready, os.environ, workers).run()
        app = create_app(ready, os.environ, serving=True)
        print(f"hybrid-router listening on http://{ready.host}:{ready.port}/v1", file=sys.stderr)
        http = bounded_protocol(ready.limits)
        config = server_config(app, host=ready.host, port=ready.port, grace_s=ready.shutdown_grace_s, http=http)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is a normal stop, as with `uvicorn.run`
            Server(config).run()
    return 0


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when the router these settings describe answers `/healthz` (a container's health check)."""
    import httpx

    settings = load(args, {"port": args.port} if args.port is not None else None)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # a wildcard bind: ask loopback
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/healthz"
    try:
        status = httpx.get(url, timeout=args.timeout).status_code
    except httpx.HTTPError as exc:
        print(f"unhealthy: {url}: {exc!r}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


def _workers(value: str) -> int:
    """`--workers`, checked now so a typo is a usage error rather than a traceback."""
    from router.ops.workers import parse_workers

    try:
        return parse_workers(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _turnaround(spec: str) -> str:
    """`--batch-turnaround`, checked now so a typo is a usage error rather than a traceback."""
    from router.simulator.config import Turnaround

    try:
        Turnaround.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


def _outcomes_file(value: str) -> str:
    from router.simulator.outcomes import Outcomes

    try:
        Outcomes.load(Path(value))
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run the built-in upstream simulator."""
    import uvicorn

    from router.simulator.app import create_simulator
    from router.simulator.config import SimConfig

    config = SimConfig(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        batch_turnaround=args.batch_turnaround,
        stream_chunk_delay_ms=args.stream_chunk_delay_ms,
        seed=args.seed,
        api_key=args.api_key,
        outcomes=args.outcomes,
    )
    print(f"simulator listening on http://{args.host}:{args.port}/v1", file=sys.stderr)
    uvicorn.run(create_simulator(config), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo on the embedded default: bundled Redis, built-in simulator, no API key."""
    from router.ops.demo import run_demo

    with redis_for(load(args)) as ready:
        run_demo(ready)
    return 0


def _source(path: str, default: str) -> str:
    """Where a file was read from, saying so when it is the packaged default."""
    if path != str(packaged(default)):
        return path
    return f"packaged default {path} (add ./{default} to override it)"


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate config, policies and pricing; print what is wrong, where, and which files were read."""
    from router.core.policy import load_policies
    from router.core.pricing import PriceTable, load_pricing, unpriced_models, unpriced_warning

    problems: list[str] = []
    settings: Settings | None = None
    rules = 0
    try:
        settings = load(args)
    except ConfigError as exc:
        problems.append(str(exc))
    if settings is not None:
        try:
            rules = len(load_policies(Path(settings.policies_dir)).rules)
        except ConfigError as exc:
            problems.append(str(exc))
        prices: PriceTable | None = None
        try:
            prices = load_pricing(Path(settings.pricing_file))
        except ConfigError as exc:
            problems.append(str(exc))
        for model in unpriced_models(settings, prices) if prices else ():
            print(f"warning: {unpriced_warning(model)}", file=sys.stderr)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    assert settings is not None
    names = ", ".join(f"{u.name} ({u.kind}, {u.base_url})" for u in settings.upstreams)
    config = _config_path(args.config) or f"built-in defaults (no {DEFAULT_CONFIG}; `hybrid-router init` writes one)"
    print(f"config OK: upstreams {names}; auth {settings.auth}")
    print(f"  config:   {config}")
    print(f"  pricing:  {_source(settings.pricing_file, DEFAULT_PRICING)}")
    print(f"  policies: {_source(settings.policies_dir, DEFAULT_POLICIES)}, {rules} rules")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Write the packaged config, price table and example policies under a directory, to edit."""
    directory = Path(args.directory)
    pairs = starter_files(directory)
    existing = [target for _, target in pairs if target.exists()]
    if existing and not args.force:
        names = ", ".join(str(target) for target in existing)
        print(f"error: {names} already exist; nothing written (--force overwrites them)", file=sys.stderr)
        return 1
    for source, target in pairs:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        except OSError as exc:
            print(f"error: {target}: cannot write: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {target}")
    here = directory.resolve() == Path.cwd().resolve()
    cd = "" if here else f"cd {shlex.quote(str(directory))} && "
    print(f"next: {cd}hybrid-router check-config, then hybrid-router serve (or hybrid-router demo)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="hybrid-router", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the router")
    serve.add_argument("--config", help=f"config file (default: {DEFAULT_CONFIG} if present)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument(
        "--upstream-url", help="base URL of the (first OpenAI-kind) upstream, e.g. http://127.0.0.1:9100/v1"
    )
    serve.add_argument("--batch-max-wait", type=float, help="seconds a deferred call may wait before its queue flushes")
    serve.add_argument("--poll-interval", type=float, help="seconds between polls of in-flight batches")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="listen beyond loopback although `auth` is 'none' or `/metrics` has no token",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="router processes on the one port (default 1; `auto`: one per CPU), coordinated through Redis",
    )
    serve.set_defaults(func=cmd_serve)

    sim = sub.add_parser("simulate", help="run the built-in OpenAI/Anthropic upstream simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9100)
    sim.add_argument("--latency-ms", type=float, default=0.0, help="added to every real-time answer")
    sim.add_argument("--error-rate", type=float, default=0.0, help="fraction of real-time calls answered 429/500")
    sim.add_argument(
        "--batch-turnaround",
        type=_turnaround,
        metavar="SPEC",
        help="batch duration: seconds (default 2) or lognormal:median=S,p95=S[,max=S], drawn per batch; "
        "a duration beyond max (default 86400) expires at max",
    )
    sim.add_argument("--seed", type=int, default=0, help="seeds drawn durations, error injection and output order")
    sim.add_argument("--stream-chunk-delay-ms", type=float, default=0.0, help="pause between streamed chunks")
    sim.add_argument("--api-key", help="the only key the simulator accepts (default: any key, or none)")
    sim.add_argument(
        "--outcomes",
        type=_outcomes_file,
        metavar="FILE",
        help="recorded outcomes (JSONL, the `routes learn` format): answer a known prompt the way its model did",
    )
    sim.set_defaults(func=cmd_simulate)

    demo = sub.add_parser("demo", help="run a mixed workload through the router on the embedded default")
    demo.add_argument("--config", help=f"config file (default: {DEFAULT_CONFIG} if present)")
    demo.set_defaults(func=cmd_demo)

    from router.ops import estimate, routes_cmd

    estimate.add_parser(sub)
    routes_cmd.add_parser(sub, f"config file (default: {DEFAULT_CONFIG} if present)", load=load, redis_for=redis_for)

    check = sub.add_parser("check-config", help="validate config, policies and pricing")
    check.add_argument("--config", help=f"config file (default: {DEFAULT_CONFIG} if present)")
    check.set_defaults(func=cmd_check_config)

    init = sub.add_parser("init", help="write an editable config/router.yaml, config/pricing.yaml and policies/")
    init.add_argument("directory", nargs="?", default=".", help="where to write them (default: here)")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    init.set_defaults(func=cmd_init)

    health = sub.add_parser("healthcheck", help="exit 0 if the router on the configured port answers /healthz")
    health.add_argument("--config", help=f"config file (default: {DEFAULT_CONFIG} if present)")
    health.add_argument("--port", type=int, help="port (default: the configured one)")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    health.set_defaults(func=cmd_healthcheck)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hybrid-router` command."""
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
