"""``longshore``: the command line for a Longshore deployment.

Every command talks to the gateway (``--addr``, ``--api-key``; or
``LONGSHORE_GATEWAY_ADDR``, ``LONGSHORE_API_KEY``; or
``$LONGSHORE_HOME/cli.yaml``), except ``up`` (runs the system) and
``db upgrade`` (migrates the database directly). ``--json`` prints data as JSON.
User errors print one line and exit non-zero; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from clients.cli.commands import board, db, dispatch, profile, sandbox, status, task, up
from clients.cli.config import load_cli_config
from clients.cli.context import Context
from clients.cli.errors import EXIT_ERROR, EXIT_INTERRUPTED, CliError, describe_rpc_error
from clients.cli.output import Output


def global_parser() -> argparse.ArgumentParser:
    """Flags accepted anywhere before ``--`` (``longshore task ls --json`` works)."""
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--addr", help="gateway host:port")
    common.add_argument("--api-key", help="API key to present")
    common.add_argument("--json", action="store_true", help="print data as JSON")
    common.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each call (default 30)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command group."""
    parser = argparse.ArgumentParser(
        prog="longshore",
        description="Longshore: kanban dispatch of agent work into Docker sandboxes.",
        parents=[global_parser()],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (up, status, board, profile, task, dispatch, sandbox, db):
        module.register(sub)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``, taking the global flags from anywhere before ``--``."""
    args = list(argv)
    cut = args.index("--") if "--" in args else len(args)
    flags, rest = global_parser().parse_known_args(args[:cut])
    parsed = build_parser().parse_args([*rest, *args[cut:]])
    for key, value in vars(flags).items():
        setattr(parsed, key, value)
    return parsed


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return (and, as a console script, exit with) its status."""
    args = parse(sys.argv[1:] if argv is None else argv)
    out = Output(json_mode=args.json)
    addr = args.addr or "the configured address"
    try:
        config = load_cli_config(addr=args.addr, api_key=args.api_key, timeout=args.timeout)
        addr = config.addr
        ctx = Context(out=out, config=config)
        try:
            code: int = args.run(args, ctx)
        finally:
            ctx.close()
    except CliError as exc:
        out.warn(f"error: {exc.message}")
        return exc.exit_code
    except grpc.RpcError as exc:
        out.warn(f"error: {describe_rpc_error(exc, addr)}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        out.warn("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:  # a bug, not a user error: still one line, no traceback
        out.warn(f"error: unexpected {type(exc).__name__}: {exc} (please report this)")
        return EXIT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
