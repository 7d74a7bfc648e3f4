"""One task, traced end to end: gateway → kanban → sandbox → Docker in one trace.

Every service runs as its own process exporting to the OTLP receiver. A task
created through the gateway keeps the creating call's trace context; its run
(dispatched by the kanban service's own loop) joins that trace, so the Docker
calls made for it hang, parent by parent, under the gateway's span.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from longshore.kanban.v1 import kanban_service_pb2, profile_pb2, task_pb2
from longshore.sandbox.v1 import sandbox_pb2

from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.support.otlp import OtlpReceiver, ReceivedSpan

CREATE = "/longshore.kanban.v1.KanbanService/CreateTask"
EXEC = "/longshore.sandbox.v1.SandboxService/Exec"


@pytest.fixture
def stack(
    tmp_path: Path, test_deployment: str, sandbox_image: str, otlp_receiver: OtlpReceiver
) -> Iterator[RealStack]:
    with real_stack(
        tmp_path,
        deployment=test_deployment,
        image=sandbox_image,
        otel_endpoint=otlp_receiver.endpoint,
        kanban_env={
            "LONGSHORE_KANBAN_DISPATCH_INTERVAL_SECONDS": "0.5",
            # Off by default (a span per statement costs ~10% of a claim's CPU).
            "LONGSHORE_DATABASE_TRACE_STATEMENTS": "true",
        },
    ) as s:
        yield s


def chain(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    """The span and its ancestors, nearest first, up to the root."""
    out = [span]
    while out[-1].parent_span_id:
        parent = by_id.get(out[-1].parent_span_id)
        assert parent is not None, f"{out[-1].name}: parent {out[-1].parent_span_id} missing"
        out.append(parent)
    return out


def describe(spans: list[ReceivedSpan]) -> str:
    return "\n".join(f"{s.service_name:20} {s.kind:8} {s.name}" for s in spans)


def test_a_dispatched_task_is_one_trace_from_gateway_to_docker(
    stack: RealStack, otlp_receiver: OtlpReceiver, sandbox_image: str
) -> None:
    with stack.channel() as channel:
        stubs = Stubs(channel)
        admin = auth(stack.keys.admin)
        stubs.kanban.CreateProfile(
            kanban_service_pb2.CreateProfileRequest(
                profile=profile_pb2.Profile(
                    name="traced",
                    executor=profile_pb2.EXECUTOR_SANDBOX,
                    sandbox_spec=sandbox_pb2.SandboxSpec(image=sandbox_image),
                )
            ),
            timeout=10,
            metadata=admin,
        )
        task = stubs.kanban.CreateTask(
            kanban_service_pb2.CreateTaskRequest(
                task=task_pb2.Task(
                    title="traced", assignee="traced", command=["echo", "traced-output"]
                )
            ),
            timeout=10,
            metadata=admin,
        ).task
    assert len(task.trace_id) == 32
    trace_id = task.trace_id

    def complete(spans: list[ReceivedSpan]) -> bool:
        # Spans arrive in batches, children before the parents that end later:
        # wait until some Docker exec span's whole ancestry has arrived.
        mine = [s for s in spans if s.trace_id == trace_id]
        ids = {s.span_id: s for s in mine}

        def rooted(span: ReceivedSpan) -> bool:
            while span.parent_span_id:
                if span.parent_span_id not in ids:
                    return False
                span = ids[span.parent_span_id]
            return True

        return any(
            s.service_name == "longshore-sandbox"
            and s.name.startswith("docker.")
            and "exec" in s.name
            and rooted(s)
            for s in mine
        ) and any(s.name == "kanban.run" for s in mine)

    spans = otlp_receiver.wait_for(complete, timeout=60)
    mine = [s for s in spans if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in mine}
    text = describe(mine)

    # The root: the gateway's server span of the CreateTask call.
    roots = [s for s in mine if not s.parent_span_id]
    assert [(r.service_name, r.kind, r.name) for r in roots] == [
        ("longshore-gateway", "SERVER", CREATE)
    ], text

    # A Docker call made for the run, and its ancestry up to that root.
    docker_exec = next(
        s
        for s in mine
        if s.service_name == "longshore-sandbox"
        and s.name.startswith("docker.")
        and "exec" in s.name
        and s.parent_span_id in by_id
    )
    path = chain(docker_exec, by_id)
    steps = [(s.service_name, s.kind, s.name) for s in path]
    expected_in_order = [
        ("longshore-sandbox", "SERVER", EXEC),
        ("longshore-kanban", "CLIENT", EXEC),
        ("longshore-kanban", "INTERNAL", "kanban.run"),
        ("longshore-kanban", "SERVER", CREATE),
        # The gateway forwards inside its server span (no client span of its own).
        ("longshore-gateway", "SERVER", CREATE),
    ]
    positions = [steps.index(step) for step in expected_in_order]
    assert positions == sorted(positions), f"{steps}\n{text}"
    assert path[-1] is roots[0]

    # Every span of the trace hangs under the same root: nothing is orphaned.
    assert all(chain(s, by_id)[-1] is roots[0] for s in mine), text
    # The sandbox was created under the same run.
    assert any(
        s.service_name == "longshore-sandbox" and s.name.startswith("docker.containers")
        for s in mine
    ), text
    # With database.trace_statements on, kanban's SQL hangs under its CreateTask span.
    create = next(s for s in mine if (s.service_name, s.kind, s.name) == expected_in_order[3])
    assert any(
        s.service_name == "longshore-kanban"
        and "db.system" in s.attributes
        and create in chain(s, by_id)
        for s in mine
    ), text
