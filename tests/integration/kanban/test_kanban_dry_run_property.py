"""Property: from any state, a dry run writes nothing and equals the real tick that follows."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from longshore.kanban.v1 import board_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import task_pb2 as S

from tests.integration.kanban.test_kanban_dispatch import comparable, db_state

ASSIGNEES = ["", "sb", "sb2", "ext", "human", "ghost"]
STATUSES = [S.TASK_STATUS_READY, S.TASK_STATUS_TODO, S.TASK_STATUS_TRIAGE]

task_spec = st.tuples(
    st.sampled_from(STATUSES),
    st.sampled_from(ASSIGNEES),
    st.integers(0, 3),
    st.one_of(st.none(), st.integers(0, 20)),  # parent: an earlier task's index
)
board_spec = st.tuples(
    st.lists(task_spec, min_size=1, max_size=14),
    st.integers(0, 4),  # tasks spawned by an earlier tick
    st.booleans(),  # do those leases expire before the ticks under test?
    st.one_of(st.none(), st.integers(1, 4)),  # max_spawn of the tick under test
)
_boards = itertools.count()


def test_dry_run_equals_the_real_tick(kanban_factory: Any) -> None:
    kanban = kanban_factory(
        default_assignee="sb", max_in_progress_per_profile="2", max_in_progress="6"
    )
    kanban.profile("sb", "sandbox")
    kanban.profile("sb2", "sandbox", cap=1)
    kanban.profile("ext", "external")
    kanban.profile("human", "none")
    ttl = kanban.app.dispatcher._section.claim_ttl_seconds

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(board_spec)
    def check(spec: tuple[list[tuple[int, str, int, int | None]], int, bool, int | None]) -> None:
        tasks, pre_spawn, expire, max_spawn = spec
        board = f"p{next(_boards)}"
        kanban.stub.CreateBoard(
            pb.CreateBoardRequest(board=board_pb2.Board(board_id=board)), timeout=5
        )
        ids: list[str] = []
        for i, (status, assignee, priority, parent) in enumerate(tasks):
            parents = [ids[parent]] if parent is not None and parent < i else []
            ids.append(
                kanban.task(
                    f"t{i}",
                    board_id=board,
                    status=status,
                    assignee=assignee,
                    priority=priority,
                    parent_ids=parents,
                ).task_id
            )
        if pre_spawn:
            kanban.stub.Dispatch(
                pb.DispatchRequest(board_id=board, max_spawn=pre_spawn), timeout=10
            )
            if expire:
                kanban.clock.advance(ttl + 1)
        before = db_state(kanban)
        dry = kanban.stub.Dispatch(
            pb.DispatchRequest(board_id=board, dry_run=True, max_spawn=max_spawn or 0), timeout=10
        ).result
        assert db_state(kanban) == before
        real = kanban.stub.Dispatch(
            pb.DispatchRequest(board_id=board, max_spawn=max_spawn or 0), timeout=10
        ).result
        assert comparable(real) == comparable(dry)
        # Free the slots so the next example starts from its own board's state.
        running = kanban.stub.ListTasks(
            pb.ListTasksRequest(board_id=board, statuses=[S.TASK_STATUS_RUNNING]), timeout=5
        ).tasks
        for t in running:
            kanban.stub.MoveTask(
                pb.MoveTaskRequest(task_id=t.task_id, status=S.TASK_STATUS_ARCHIVED), timeout=5
            )

    check()
