"""``longshore up``: run the whole system on this machine until Ctrl-C.

Starts sandbox, kanban, gateway (and the dashboard) as child processes with
the embedded defaults (SQLite under ``LONGSHORE_HOME``, the local Docker
engine), a fresh internal token and a fresh API key (only its hash is given
to the gateway), waits for each to be healthy, and prints where everything is
- only then, and only when every child answers its own health check.
The key is also written to ``$LONGSHORE_HOME/cli.yaml`` so the other
commands work without flags.

Exposure: every listener binds 127.0.0.1 by default, so sandboxes (on the
engine's bridge) reach none of them. ``--host`` opens the gateway and the
dashboard wider; the kanban and sandbox backends always stay on loopback.
"""

from __future__ import annotations

import argparse
import importlib.util
import secrets
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from clients.cli.config import write_config_file
from clients.cli.context import Context
from clients.cli.errors import CliError
from clients.cli.supervisor import ChildSpec, CrashPolicy, Supervisor, child_env, current_env

FULL_SCOPES = "read+write+worker+admin"
DASHBOARD_SCOPES = "read+write+admin"
LOOPBACK = "127.0.0.1"
HOME_MODE = 0o700
_EVERY_INTERFACE = ("0.0.0.0", "::", "[::]", "")


def register(sub: Any) -> None:
    """Add the ``up`` command."""
    parser = sub.add_parser("up", help="run every service on this machine until Ctrl-C")
    parser.add_argument(
        "--host",
        default=LOOPBACK,
        help="interface the gateway and the dashboard bind (default 127.0.0.1; the "
        "kanban and sandbox backends always bind 127.0.0.1)",
    )
    parser.add_argument("--gateway-port", type=int, default=50051)
    parser.add_argument("--kanban-port", type=int, default=50052)
    parser.add_argument("--sandbox-port", type=int, default=50053)
    parser.add_argument("--dashboard-port", type=int, default=8080)
    parser.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    parser.add_argument(
        "--no-supervise",
        action="store_true",
        help="do not restart crashed services: the first exit ends `up` with its code",
    )
    parser.add_argument("--quiet", action="store_true", help="keep service logs off the terminal")
    # Test seam: the first restart delay (DESIGN.md: 1 s, doubling, capped at 60 s).
    parser.add_argument("--backoff-base", type=float, default=1.0, help=argparse.SUPPRESS)
    # Test seam: how long each child may take to answer SERVING.
    parser.add_argument("--health-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def _has_dashboard() -> bool:
    return importlib.util.find_spec("services.dashboard.__main__") is not None


def build_specs(
    args: argparse.Namespace, home: Path, token: str, keys: dict[str, str]
) -> list[ChildSpec]:
    """The children of ``up``, in start order."""
    from services.gateway.auth import key_entry

    sandbox = f"{LOOPBACK}:{args.sandbox_port}"
    kanban = f"{LOOPBACK}:{args.kanban_port}"
    gateway_listen = f"{args.host}:{args.gateway_port}"
    gateway = reachable(args.host, args.gateway_port)
    base = current_env()
    common = {"LONGSHORE_HOME": str(home), "LONGSHORE_INTERNAL_TOKEN": token}
    entries = [key_entry("up", FULL_SCOPES.split("+"), keys["up"])]
    if "dashboard" in keys:
        entries.append(key_entry("dashboard", DASHBOARD_SCOPES.split("+"), keys["dashboard"]))
    python = sys.executable
    specs = [
        ChildSpec(
            "sandbox",
            [python, "-m", "services.sandbox"],
            child_env(
                base,
                {**common, "LONGSHORE_SANDBOX_LISTEN": sandbox, "LONGSHORE_SANDBOX_ADDR": sandbox},
            ),
            grpc_health=sandbox,
            listen=sandbox,
        ),
        ChildSpec(
            "kanban",
            [python, "-m", "services.kanban"],
            child_env(
                base,
                {
                    **common,
                    "LONGSHORE_KANBAN_LISTEN": kanban,
                    "LONGSHORE_KANBAN_ADDR": kanban,
                    "LONGSHORE_SANDBOX_ADDR": sandbox,
                },
            ),
            grpc_health=kanban,
            listen=kanban,
        ),
        ChildSpec(
            "gateway",
            [python, "-m", "services.gateway"],
            child_env(
                base,
                {
                    **common,
                    "LONGSHORE_GATEWAY_LISTEN": gateway_listen,
                    "LONGSHORE_GATEWAY_ADDR": gateway,
                    "LONGSHORE_KANBAN_ADDR": kanban,
                    "LONGSHORE_SANDBOX_ADDR": sandbox,
                    "LONGSHORE_GATEWAY_API_KEYS": ",".join(entries),
                },
            ),
            grpc_health=gateway,
            listen=gateway_listen,
        ),
    ]
    if "dashboard" in keys:
        dashboard = f"{args.host}:{args.dashboard_port}"
        specs.append(
            ChildSpec(
                "dashboard",
                [python, "-m", "services.dashboard"],
                child_env(
                    base,
                    {
                        **common,
                        "LONGSHORE_DASHBOARD_LISTEN": dashboard,
                        "LONGSHORE_DASHBOARD_API_KEY": keys["dashboard"],
                        "LONGSHORE_GATEWAY_ADDR": gateway,
                    },
                ),
                http_health=f"http://{reachable(args.host, args.dashboard_port)}/",
                listen=dashboard,
            )
        )
    return specs


def reachable(host: str, port: int) -> str:
    """Where a client on this machine reaches a listener bound to ``host:port``."""
    return f"{LOOPBACK if host in _EVERY_INTERFACE else host}:{port}"


def make_home(home: Path) -> None:
    """Create ``LONGSHORE_HOME`` (and its parents) when missing, readable by its owner only.

    It holds the SQLite database, the logs and the CLI's API key. An existing
    directory keeps the permissions its owner gave it.
    """
    if not home.is_dir():
        home.mkdir(mode=HOME_MODE, parents=True, exist_ok=True)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Start everything, print the addresses and the key, supervise until stopped."""
    from services.gateway.auth import new_key

    home = ctx.config.home
    make_home(home)
    keys = {"up": new_key()}
    if not args.no_dashboard and _has_dashboard():
        keys["dashboard"] = new_key()
    specs = build_specs(args, home, secrets.token_urlsafe(32), keys)
    supervisor = Supervisor(
        specs,
        log_dir=home / "logs",
        supervise=not args.no_supervise,
        policy=CrashPolicy(backoff_base=args.backoff_base),
        health_timeout=args.health_timeout,
        terminal=None if args.quiet else sys.stdout,
        say=lambda text: ctx.out.warn(f"up: {text}"),
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        supervisor.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            supervisor.start()
        except RuntimeError as exc:
            raise CliError(f"up: {exc}") from exc
        gateway = reachable(args.host, args.gateway_port)
        config_path = write_config_file(home, addr=gateway, api_key=keys["up"])
        dashboard = f"http://{reachable(args.host, args.dashboard_port)}"
        summary = {
            "gateway": gateway,
            "gateway_listen": f"{args.host}:{args.gateway_port}",
            "api_key": keys["up"],
            "dashboard": dashboard if "dashboard" in keys else "",
            "home": str(home),
            "logs": str(home / "logs"),
            "cli_config": str(config_path),
        }
        if ctx.out.json_mode:
            ctx.out.json(summary)
        else:
            ctx.out.line("Longshore is up.")
            wider = (
                "" if args.host == LOOPBACK else f"   (listening on {summary['gateway_listen']})"
            )
            ctx.out.line(f"  gateway    {gateway}{wider}")
            ctx.out.line(f"  api key    {keys['up']}   (saved in {config_path})")
            if summary["dashboard"]:
                ctx.out.line(f"  dashboard  {summary['dashboard']}")
            ctx.out.line(f"  logs       {summary['logs']}/<service>/")
            ctx.out.line("Press Ctrl-C to stop.")
        return supervisor.run()
    finally:
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
