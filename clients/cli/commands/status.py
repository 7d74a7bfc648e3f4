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
    """Print the status; exit 1 when a backend is not serving."""
    del args
    with ctx.out.progress("asking the gateway"):
        reply = ctx.conn.gateway.GetStatus(gateway_service_pb2.GetStatusRequest())
    healthy = all(b.health == gateway_service_pb2.BACKEND_HEALTH_SERVING for b in reply.backends)
    if ctx.out.json_mode:
        ctx.out.json(reply)
        return 0 if healthy else 1
    ctx.out.line(f"gateway   {ctx.config.addr}  version {reply.version}")
    ctx.out.line(f"deployment {reply.deployment}  scopes {'+'.join(reply.scopes)}")
    rows = [
        (
            b.name,
            b.address,
            enum_label(gateway_service_pb2.BackendHealth.Name(b.health), "BACKEND_HEALTH_"),
            f"{b.latency_ms:.1f}ms",
            b.detail,
        )
        for b in reply.backends
    ]
    ctx.out.table(("BACKEND", "ADDRESS", "HEALTH", "LATENCY", "DETAIL"), rows)
    return 0 if healthy else 1
