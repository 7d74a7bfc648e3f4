"""The dispatcher page: a dry-run preview with each ready task's reason, and
the last tick run from this dashboard.

The contracts have no "last tick" read (``Dispatch`` either runs or plans a
tick), so "last tick" is the last real tick this dashboard process ran.
"""

from __future__ import annotations

import time
from typing import Any

from longshore.kanban.v1 import kanban_service_pb2, task_pb2

from services.dashboard.app import Router
from services.dashboard.convert import task_json, to_json
from services.dashboard.gateway import can_write
from services.dashboard.views import ViewContext
from services.dashboard.web import Request, Response


def register(router: Router, ctx: ViewContext) -> None:
    """Register the dispatcher routes."""

    def page(request: Request) -> Response:
        return ctx.pages.render(
            identity=request.identity,
            page="dispatcher",
            title="Dispatcher",
            template="dispatcher.html",
            scripts=("dispatcher.js",),
        )

    def preview(request: Request) -> Response:
        board_id = request.query.get("board_id", "")
        gw = ctx.gateway_for(request)
        # A dry run is a Dispatch call, which needs the write scope: a
        # read-only key sees the ready tasks and their reasons without it.
        plan: dict[str, Any] = {"preview": None, "duration": 0.0}
        if can_write(ctx.scopes_of(request.identity)):
            response = gw.call(
                gw.kanban.Dispatch,
                kanban_service_pb2.DispatchRequest(board_id=board_id, dry_run=True),
            )
            plan = {
                "preview": to_json(response.result),
                "duration": response.duration.ToTimedelta().total_seconds(),
            }
        ready = [
            task_json(task)
            for task in gw.list_tasks(board_id)
            if task.status == task_pb2.TASK_STATUS_READY
        ]
        with ctx.lock:
            last = ctx.state.get("last_tick")
        return Response.json({**plan, "ready": ready, "last_tick": last})

    def tick(request: Request) -> Response:
        data = request.json()
        board_id = str(data.get("board_id", ""))
        gw = ctx.gateway_for(request)
        response = gw.call(
            gw.kanban.Dispatch, kanban_service_pb2.DispatchRequest(board_id=board_id)
        )
        last = {
            "result": to_json(response.result),
            "duration": response.duration.ToTimedelta().total_seconds(),
            "ran_at": time.time(),
            "by": request.identity.subject if request.identity else "",
        }
        with ctx.lock:
            ctx.state["last_tick"] = last
        return Response.json({"last_tick": last})

    router.add("GET", "/dispatcher", page)
    router.add("GET", "/api/dispatcher", preview)
    router.add("POST", "/api/dispatcher/tick", tick)
