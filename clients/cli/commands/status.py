"""``longshore status``: the gateway's version and each backend's health."""

from __future__ import annotations

import argparse
from typing import Any

from longshore.gateway.v1 import gateway_service_pb2

from clients.cli.context import Context
from clients.cli.output import enum_label


def register(sub: Any) -> None:
    """Add the ``status`` command."""
    parser = sub.add_parser("status", help="gateway version and backend health")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print the status; exit 1 when a backend is not serving, saying why on stderr."""
    del args
    with ctx.out.progress("asking the gateway"):
        reply = ctx.conn.gateway.GetStatus(gateway_service_pb2.GetStatusRequest())
    down = [b for b in reply.backends if b.health != gateway_service_pb2.BACKEND_HEALTH_SERVING]
    if ctx.out.json_mode:
        ctx.out.json(reply)
    else:
        ctx.out.line(f"gateway   {ctx.config.addr}  version {reply.version}")
        ctx.out.line(f"deployment {reply.deployment}  scopes {'+'.join(reply.scopes)}")
        rows = [
            (
                b.name,
                b.address,
                health_label(b.health),
                f"{b.latency_ms:.1f}ms",
                b.version or "-",
                b.detail,
            )
            for b in reply.backends
        ]
        ctx.out.table(("BACKEND", "ADDRESS", "HEALTH", "LATENCY", "VERSION", "DETAIL"), rows)
    # The reason matters more than the table: one line per backend that is down,
    # on stderr in both modes (the gateway relays the backend's own reason).
    for b in down:
        ctx.out.warn(f"{b.name} is {health_label(b.health)}: {b.detail or 'no reason given'}")
    return 1 if down else 0


def health_label(health: gateway_service_pb2.BackendHealth.ValueType) -> str:
    """``serving``, ``not_serving``, ``unreachable`` for a BackendHealth value."""
    name = gateway_service_pb2.BackendHealth.Name(health)
    return enum_label(name, "BACKEND_HEALTH_")
