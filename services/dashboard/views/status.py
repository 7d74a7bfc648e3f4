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
            # Asked with the caller's key: the scopes shown are the caller's.
            gateway.update(to_json(ctx.gateway_for(request).status()))
            gateway["reachable"] = True
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code is grpc.StatusCode.UNAUTHENTICATED and identity and identity.ends_with_its_key:
                raise  # the session's own key was rotated: the session ends
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
        return ctx.pages.render(
            identity=request.identity,
            page="status",
            title="Status",
            template="status.html",
            scripts=("status.js",),
        )

    router.add("GET", "/api/status", public_status)
    router.add("GET", "/api/status/detail", detail)
    router.add("GET", "/status", page)
