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
    """A sandbox without its env-bearing labels, plus a ``restarted`` flag."""
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
        body = (
            '<section id="sandboxes-page">'
            '<div class="toolbar"><h1>Sandboxes</h1>'
            '<button id="refresh">Refresh</button></div>'
            '<div class="scroll-x"><table id="sandboxes"><thead><tr><th>name</th><th>task</th>'
            "<th>profile</th><th>state</th><th>age</th><th>persistent</th><th>restarted</th>"
            "<th>image</th></tr></thead><tbody></tbody></table></div>"
            '<section class="panel"><h2>Orphan reaper</h2>'
            '<div class="toolbar"><button id="reap-preview">Preview (dry run)</button>'
            '<button id="reap" class="danger">Reap now</button></div>'
            '<div id="reap-result"></div></section>'
            "</section>"
        )
        return ctx.pages.render(
            identity=request.identity,
            page="sandboxes",
            title="Sandboxes",
            body=body,
            scripts=("sandboxes.js",),
        )

    def listing(request: Request) -> Response:
        request_pb = sandbox_service_pb2.ListSandboxesRequest(
            profile=request.query.get("profile", ""), page_size=1000
        )
        items = ctx.gateway.paged(ctx.gateway.sandbox.ListSandboxes, request_pb, "sandboxes")
        return Response.json({"sandboxes": [sandbox_json(sandbox) for sandbox in items]})

    def reap(dry_run: bool) -> Any:
        return ctx.gateway.call(
            ctx.gateway.sandbox.ReapOrphans, sandbox_service_pb2.ReapOrphansRequest(dry_run=dry_run)
        )

    def preview(request: Request) -> Response:
        return Response.json({"report": reap_json(reap(True))})

    def reap_now(request: Request) -> Response:
        return Response.json({"report": reap_json(reap(False))})

    router.add("GET", "/sandboxes", page)
    router.add("GET", "/api/sandboxes", listing)
    router.add("GET", "/api/sandboxes/reap-preview", preview)
    router.add("POST", "/api/sandboxes/reap", reap_now)
