"""Status: the public ``/api/status`` and the status page (versions, health, auth)."""

from __future__ import annotations

import grpc

from services.dashboard.app import Router
from services.dashboard.auth.modes import Mode
from services.dashboard.convert import to_json
from services.dashboard.views import ViewContext
from services.dashboard.web import Request, Response

#: Deadline of the reachability probe behind the public status.
PROBE_TIMEOUT_SECONDS = 2.0


def register(router: Router, ctx: ViewContext) -> None:
    """Register the status routes."""

    def public_status(request: Request) -> Response:
        """Version, gateway reachability and whether login is required; nothing secret."""
        reachable = True
        try:
            ctx.gateway.status()
        except grpc.RpcError as exc:
            # A gateway that answers UNAUTHENTICATED is reachable; the key is the problem.
            code = exc.code() if isinstance(exc, grpc.Call) else None
            reachable = code in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            )
        return Response.json(
            {
                "version": ctx.version,
                "gateway_reachable": reachable,
                "auth_required": ctx.gate.mode is Mode.GATED,
                "auth_mode": ctx.gate.mode.value,
            }
        )

    def detail(request: Request) -> Response:
        identity = request.identity
        gateway: dict[str, object] = {"address": ctx.gateway.address}
        try:
            gateway.update(to_json(ctx.gateway.status()))
            gateway["reachable"] = True
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            gateway["reachable"] = False
            gateway["error"] = (
                f"{code.name}: {exc.details() if isinstance(exc, grpc.Call) else exc}"
            )
        return Response.json(
            {
                "dashboard": {"version": ctx.version},
                "gateway": gateway,
                "auth": {
                    "mode": ctx.gate.mode.value,
                    "methods": ctx.gate.config.methods.names()
                    if ctx.gate.mode is Mode.GATED
                    else [],
                    "user": identity.subject if identity else "",
                    "via": identity.method if identity else "",
                },
            }
        )

    def page(request: Request) -> Response:
        body = (
            '<section id="status-page"><h1>Status</h1>'
            '<div class="task-grid">'
            '<section class="panel"><h2>Versions</h2><dl id="versions"></dl></section>'
            '<section class="panel"><h2>Auth</h2><dl id="auth"></dl></section>'
            '<section class="panel wide"><h2>Backends</h2><div class="scroll-x">'
            '<table id="backends"><thead><tr><th>backend</th><th>health</th><th>version</th>'
            "<th>address</th><th>latency</th><th>detail</th></tr></thead><tbody></tbody></table>"
            "</div></section></div></section>"
        )
        return ctx.pages.render(
            identity=request.identity,
            page="status",
            title="Status",
            body=body,
            scripts=("status.js",),
        )

    router.add("GET", "/api/status", public_status)
    router.add("GET", "/api/status/detail", detail)
    router.add("GET", "/status", page)
