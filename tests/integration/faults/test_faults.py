"""Faults injected into a running stack: no task is blocked by one, every task ends
``done`` exactly once after recovery, the runs that failed meanwhile are the
platform's (never counted), no process of a stopped command survives next to
its retry (``docker top``), and no container is left behind.

Each test runs the real sandbox manager and kanban as processes on the real
engine (tests/integration/faults/stack.py); the faults are an engine socket
cut by a proxy for 10 s, ``kill -9`` of the sandbox manager during an exec,
``kill -9`` of kanban during a run, and a PostgreSQL restart during ticks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import docker
import grpc
import pytest
from grpc_health.v1 import health_pb2
from longshore.kanban.v1 import dispatch_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import task_pb2 as S

from tests.integration.faults.stack import Stack, TopSampler, health, stack, wait_for
from tests.support.engine_proxy import EngineProxy
from tests.support.postgres import PostgresCluster

pytestmark = pytest.mark.timeout(240)

# The command under test; its `sleep` is what `docker top` looks for.
MARKER = "sleep 4"
SCRIPT = f"echo start; {MARKER}; echo end"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def fault_stack(
    tmp_path: Path, docker_client: docker.DockerClient, sandbox_image: str, test_deployment: str
) -> Iterator[Stack]:
    with stack(tmp_path, test_deployment, sandbox_image, docker_client) as built:
        yield built


def _assert_no_survivor(top: TopSampler) -> None:
    assert top.samples > 0, "docker top was never sampled"
    # The sampler saw the command itself, so "at most one" below means something.
    assert any(n >= 1 for n in top.most.values()), f"{MARKER!r} never seen: {top.most}"
    survivors = {cid[:12]: n for cid, n in top.most.items() if n > 1}
    assert not survivors, f"a stopped command ran next to its retry: {survivors}"


def test_kanban_killed_during_a_run_reruns_each_task_once(
    fault_stack: Stack, docker_client: docker.DockerClient, test_deployment: str
) -> None:
    st = fault_stack
    st.start_sandbox()
    st.start_kanban()
    st.profile()
    with TopSampler(docker_client, test_deployment, MARKER) as top:
        ids = [st.task(f"t{i}", SCRIPT) for i in range(3)]
        st.wait_running(ids)
        st.kill(st.kanban)  # mid-run: nothing is finished, released or handed over
        st.start_kanban()
        st.wait_done(ids, 60)
    _assert_no_survivor(top)
    st.assert_recovered(ids, expect_platform_failures=True)
    lost = [r for t in ids for r in st.runs(t) if r.status == 6]  # RUN_STATUS_LOST
    assert lost and all(r.error == "executor gone" for r in lost)


def test_sandbox_manager_killed_during_an_exec_pauses_then_resumes(
    fault_stack: Stack, docker_client: docker.DockerClient, test_deployment: str
) -> None:
    st = fault_stack
    st.start_sandbox()
    st.start_kanban()
    st.profile()
    with TopSampler(docker_client, test_deployment, MARKER) as top:
        ids = [st.task(f"t{i}", SCRIPT) for i in range(3)]
        st.wait_running(ids)
        st.kill(st.sandbox)
        # While it is gone: sandbox dispatch is paused and says why.
        late = st.task("late", SCRIPT)
        paused = wait_for(
            "the backend to be reported unavailable",
            lambda: (
                st.stub.Dispatch(
                    pb.DispatchRequest(dry_run=True), timeout=10
                ).result.backend_unavailable
            ),
            30,
        )
        assert paused.startswith("sandbox backend unavailable since "), paused
        why = st.stub.ExplainTask(pb.ExplainTaskRequest(task_id=late), timeout=10).readiness
        assert why.reason == S.READINESS_REASON_BACKEND_UNAVAILABLE, why
        assert "next probe in" in why.message, why
        st.start_sandbox()
        ids.append(late)
        st.wait_done(ids, 60)
    _assert_no_survivor(top)
    st.assert_recovered(ids, expect_platform_failures=True)


def test_engine_unreachable_for_10s_blocks_nothing(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    sandbox_image: str,
    test_deployment: str,
) -> None:
    with (
        EngineProxy() as proxy,
        stack(
            tmp_path,
            test_deployment,
            sandbox_image,
            docker_client,
            sandbox_env={"DOCKER_HOST": proxy.docker_host},
        ) as st,
    ):
        st.start_sandbox()
        st.start_kanban()
        st.profile()
        with TopSampler(docker_client, test_deployment, MARKER) as top:
            ids = [st.task(f"t{i}", SCRIPT) for i in range(2)]
            st.wait_running(ids)
            proxy.cut()
            cut_at = time.monotonic()
            ids += [st.task(f"during{i}", SCRIPT) for i in range(2)]
            # The manager says why it is not serving; kanban pauses sandbox dispatch.
            _status, detail = wait_for(
                "the manager's health to go NOT_SERVING",
                lambda: (h := health(st.sandbox_addr))[0] == NOT_SERVING and h,
                10,
            )
            assert "engine" in detail, detail

            # A task made during the cut ends up paused, or backing off if its
            # spawn met the outage before the breaker opened (its acquire is
            # retried for a moment first): it is never run into the outage.
            def held() -> dispatch_pb2.DispatchResult | None:
                r = st.stub.Dispatch(pb.DispatchRequest(dry_run=True), timeout=10).result
                waiting = {t.task_id for t in (*r.backend_paused, *r.backing_off)}
                return r if r.backend_unavailable and ids[-1] in waiting else None

            result = wait_for("kanban to pause the sandbox backend", held, 10)
            assert result.backend_unavailable.startswith("sandbox backend unavailable since ")
            assert "next probe in" in result.backend_unavailable
            why = st.stub.ExplainTask(pb.ExplainTaskRequest(task_id=ids[-1]), timeout=10)
            assert why.readiness.reason in (
                S.READINESS_REASON_BACKEND_UNAVAILABLE,
                S.READINESS_REASON_BACKING_OFF,
            ), f"{why}\n{st.log_tails()}"
            time.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))  # the outage lasts 10 s
            proxy.restore()
            wait_for(
                "the manager to serve again", lambda: health(st.sandbox_addr)[0] == SERVING, 20
            )
            st.wait_done(ids, 60)
        _assert_no_survivor(top)
        st.assert_recovered(ids, expect_platform_failures=True)


def test_postgres_restarted_during_ticks(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    sandbox_image: str,
    test_deployment: str,
) -> None:
    cluster = PostgresCluster()
    cluster.start()
    try:
        url = cluster.create_database("kanban")
        with stack(tmp_path, test_deployment, sandbox_image, docker_client, database_url=url) as st:
            st.start_sandbox()
            st.start_kanban()
            st.profile()
            ids = [st.task(f"t{i}", "echo start; sleep 2; echo end") for i in range(3)]
            st.wait_running(ids[:1])
            _stop_postgres(cluster)
            _status, detail = wait_for(
                "kanban's health to say the database is unreachable",
                lambda: (h := health(st.kanban_addr))[0] == NOT_SERVING and h,
                15,
            )
            assert detail.startswith("database unreachable: "), detail
            # A call meanwhile is told the platform failed (retryable), not INTERNAL.
            for call in (
                lambda: st.task("during", "true"),
                lambda: st.get(ids[0]),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
                assert refused.value.details().startswith("database unreachable: ")
            time.sleep(2)  # ticks, heartbeats and run endings meet the outage
            _start_postgres(cluster)
            wait_for("kanban to serve again", lambda: health(st.kanban_addr)[0] == SERVING, 20)
            ids.append(st.task("after", "echo after"))
            st.wait_done(ids, 60)
            st.assert_recovered(ids, expect_platform_failures=False)
    finally:
        cluster.stop()


def _stop_postgres(cluster: PostgresCluster) -> None:
    # The first half of `pg_ctl restart`, with a pause between the halves so
    # the outage is observable: fast shutdown ends every connection.
    cluster._run(
        str(cluster.bin_dir / "pg_ctl"), "-D", str(cluster.data_dir), "-m", "fast", "-w", "stop"
    )
    cluster.started = False


def _start_postgres(cluster: PostgresCluster) -> None:
    # Same port and options as PostgresCluster.start (pg_ctl keeps them in
    # postmaster.opts, which `pg_ctl restart` reuses; `start` needs them again).
    options = (
        f"-p {cluster.port} -h 127.0.0.1 -k {cluster.root} -F "
        "-c full_page_writes=off -c synchronous_commit=off -c max_connections=200"
    )
    cluster._run(
        str(cluster.bin_dir / "pg_ctl"),
        "-D", str(cluster.data_dir),
        "-l", str(cluster.log_path),
        "-o", options,
        "-w", "-t", "60",
        "start",
    )  # fmt: skip
    cluster.started = True
