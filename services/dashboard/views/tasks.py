"""The task page: fields, dependencies, timeline, runs and live output."""

from __future__ import annotations

import codecs
from typing import Any

from longshore.kanban.v1 import kanban_service_pb2

from services.dashboard.app import Router
from services.dashboard.convert import task_json, to_json
from services.dashboard.streams import EventStream
from services.dashboard.views import ViewContext
from services.dashboard.web import Request, Response


def register(router: Router, ctx: ViewContext) -> None:
    """Register the task routes."""

    def page(request: Request) -> Response:
        task_id = request.params["task_id"]
        return ctx.pages.render(
            identity=request.identity,
            page="task",
            title=task_id,
            template="task.html",
            scripts=("task.js",),
            task_id=task_id,
        )

    def detail(request: Request) -> Response:
        task_id = request.params["task_id"]
        gateway = ctx.gateway_for(request)
        task = gateway.call(
            gateway.kanban.GetTask, kanban_service_pb2.GetTaskRequest(task_id=task_id)
        ).task
        events = gateway.paged(
            gateway.kanban.ListTaskEvents,
            kanban_service_pb2.ListTaskEventsRequest(task_id=task_id, page_size=1000),
            "events",
        )
        runs = gateway.call(
            gateway.kanban.ListTaskRuns,
            kanban_service_pb2.ListTaskRunsRequest(task_id=task_id, page_size=100),
        ).runs
        return Response.json(
            {
                "task": task_json(task),
                "events": [to_json(event) for event in events],
                "runs": [to_json(run) for run in runs],
                "last_event_id": max((event.event_id for event in events), default=0),
            }
        )

    def output(request: Request) -> Response:
        task_id = request.params["task_id"]
        run_id = request.query.get("run_id", "")
        offset_text = request.query.get("offset", "0")
        offset = int(offset_text) if offset_text.isdigit() else 0
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        gw = ctx.gateway_for(request)
        identity = request.identity

        def start() -> Any:
            return gw.stream_output(task_id=task_id, run_id=run_id, offset=offset)

        def convert(message: Any) -> tuple[str, str, Any]:
            text = decoder.decode(message.data, final=message.eof)
            data = {
                "run_id": message.run_id,
                "text": text,
                "next_offset": message.next_offset,
                "eof": message.eof,
            }
            return "output", str(message.next_offset), data

        return Response.event_stream(
            EventStream(start, convert, on_unauthenticated=lambda: ctx.end_session(identity))
        )

    router.add("GET", "/tasks/{task_id}", page)
    router.add("GET", "/api/tasks/{task_id}", detail)
    router.add("GET", "/api/tasks/{task_id}/output", output)
