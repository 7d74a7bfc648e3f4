"""The sandboxes page: labelled containers, a reaper preview and a reap button."""

from __future__ import annotations

from typing import Any

from longshore.sandbox.v1 import sandbox_service_pb2

from services.dashboard.app import Router
from services.dashboard.convert import to_json
from services.dashboard.views import ViewContext
from services.dashboard.web import Request, Response

#: A sandbox started this long after it was created has been (re)started
#: for reuse rather than fresh.
RESTART_SLACK_SECONDS = 5.0


def sandbox_json(sandbox: Any) -> dict[str, Any]:
    """A sandbox (env values redacted by :func:`to_json`), plus a ``restarted`` flag."""
    data = to_json(sandbox)
    started = sandbox.start_time.ToSeconds() if sandbox.HasField("start_time") else 0
    created = sandbox.create_time.ToSeconds() if sandbox.HasField("create_time") else 0
    data["restarted"] = bool(started and created and started - created > RESTART_SLACK_SECONDS)
    return data


def reap_json(response: Any) -> dict[str, Any]:
    """A reaper report: removed, spared and failed decisions."""
    return to_json(response)


def register(router: Router, ctx: ViewContext) -> None:
    """Register the sandbox routes."""

    def page(request: Request) -> Response:
        return ctx.pages.render(
            identity=request.identity,
            page="sandboxes",
            title="Sandboxes",
            template="sandboxes.html",
            scripts=("sandboxes.js",),
        )

    def listing(request: Request) -> Response:
        request_pb = sandbox_service_pb2.ListSandboxesRequest(
            profile=request.query.get("profile", ""), page_size=1000
        )
        gw = ctx.gateway_for(request)
        items = gw.paged(gw.sandbox.ListSandboxes, request_pb, "sandboxes")
        return Response.json({"sandboxes": [sandbox_json(sandbox) for sandbox in items]})

    def reap(request: Request, *, dry_run: bool) -> Any:
        gw = ctx.gateway_for(request)
        return gw.call(
            gw.sandbox.ReapOrphans, sandbox_service_pb2.ReapOrphansRequest(dry_run=dry_run)
        )

    def preview(request: Request) -> Response:
        return Response.json({"report": reap_json(reap(request, dry_run=True))})

    def reap_now(request: Request) -> Response:
        return Response.json({"report": reap_json(reap(request, dry_run=False))})

    router.add("GET", "/sandboxes", page)
    router.add("GET", "/api/sandboxes", listing)
    router.add("GET", "/api/sandboxes/reap-preview", preview)
    router.add("POST", "/api/sandboxes/reap", reap_now)
