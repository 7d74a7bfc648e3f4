"""A real two-service stack for fault injection: the sandbox manager and kanban as
processes, the real engine, and what every fault test checks afterwards.

Everything runs in the test's own deployment (``io.longshore.deployment``) so
the label-filtered container list, the ``docker top`` sampler and the
finaliser see only this test's sandboxes. Settings are short (ticks every
0.3 s, 3 s leases, 0.5 s backoffs and probes) so a fault and its recovery
fit in well under a minute.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import kanban_service_pb2_grpc, profile_pb2, run_pb2
from longshore.kanban.v1 import task_pb2 as S
from longshore.sandbox.v1 import sandbox_pb2

from services.runtime.channels import open_channel
from tests.support.net import free_port
from tests.support.processes import ServiceProcess

TOKEN = "faults-internal-token"
DEPLOYMENT_LABEL = "io.longshore.deployment"
HEALTH_DETAIL_KEY = "longshore-health-detail"

KANBAN_ENV = {
    "LONGSHORE_KANBAN_DISPATCH_INTERVAL_SECONDS": "0.3",
    "LONGSHORE_KANBAN_CLAIM_TTL_SECONDS": "3",
    "LONGSHORE_KANBAN_FAILURE_LIMIT": "2",
    "LONGSHORE_KANBAN_RETRY_INITIAL_BACKOFF_SECONDS": "0.5",
    "LONGSHORE_KANBAN_RETRY_MAX_BACKOFF_SECONDS": "2",
    "LONGSHORE_KANBAN_BACKEND_PROBE_INTERVAL_SECONDS": "0.5",
    "LONGSHORE_KANBAN_BACKEND_MAX_PROBE_INTERVAL_SECONDS": "1",
    "LONGSHORE_DATABASE_PROBE_INTERVAL_SECONDS": "0.3",
    "LONGSHORE_DATABASE_PROBE_TIMEOUT_SECONDS": "2",
}
SANDBOX_ENV = {
    "LONGSHORE_SANDBOX_REAPER_ENABLED": "false",
    "LONGSHORE_SANDBOX_STOP_TIMEOUT_SECONDS": "1",
    "LONGSHORE_SANDBOX_ENGINE_PROBE_INTERVAL_SECONDS": "0.5",
    "LONGSHORE_SANDBOX_ENGINE_PROBE_TIMEOUT_SECONDS": "1",
}


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy (another process does the work)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.RpcError):
            last = check()
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def health(addr: str) -> tuple[int, str]:
    """(status, detail) of a server's gRPC health; (-1, error) when it does not answer."""
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response, call = stub.Check.with_call(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError as err:
            return -1, str(err.code())  # type: ignore[attr-defined]
        detail = dict(call.trailing_metadata() or ()).get(HEALTH_DETAIL_KEY, "")
        return response.status, str(detail)


@dataclass
class TopSampler:
    """Samples ``docker top`` of the deployment's sandboxes in the background.

    Records, per container, the most processes at once whose command line
    starts with ``marker`` (the command under test): more than one means a
    stopped exec survived next to its retry.
    """

    client: docker.DockerClient
    deployment: str
    marker: str
    most: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def processes(self, container_id: str) -> list[str]:
        """Command lines inside one container now (``docker top``)."""
        try:
            top = self.client.api.top(container_id, ps_args="-o pid,args")
        except docker.errors.APIError:
            return []  # stopped or removed between the list and the top
        titles = [t.upper() for t in top.get("Titles") or []]
        column = titles.index("COMMAND") if "COMMAND" in titles else len(titles) - 1
        return [row[column] for row in top.get("Processes") or []]

    def sample(self) -> None:
        """One sample of every running sandbox of the deployment."""
        rows = self.client.api.containers(
            filters={"label": f"{DEPLOYMENT_LABEL}={self.deployment}", "status": "running"}
        )
        for row in rows:
            count = sum(1 for cmd in self.processes(row["Id"]) if cmd.startswith(self.marker))
            self.most[row["Id"]] = max(self.most.get(row["Id"], 0), count)
        self.samples += 1

    def __enter__(self) -> TopSampler:
        def loop() -> None:
            while not self._stop.wait(0.25):
                with contextlib.suppress(Exception):
                    self.sample()

        self._thread = threading.Thread(target=loop, name="top-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


class Stack:
    """The sandbox manager and kanban as real processes, restartable, in one deployment.

    Args:
        home: ``LONGSHORE_HOME`` of both services (logs, the SQLite file).
        deployment: The test's deployment.
        image: The busybox image sandboxes run.
        client: A Docker client on the real engine.
        database_url: Kanban's database; SQLite under ``home`` when empty.
        sandbox_env: Extra variables of the sandbox manager (e.g. DOCKER_HOST).
    """

    def __init__(
        self,
        home: Path,
        deployment: str,
        image: str,
        client: docker.DockerClient,
        *,
        database_url: str = "",
        sandbox_env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.deployment = deployment
        self.image = image
        self.client = client
        self.sandbox_addr = f"127.0.0.1:{free_port()}"
        self.kanban_addr = f"127.0.0.1:{free_port()}"
        common = {
            "LONGSHORE_HOME": str(home),
            "LONGSHORE_DEPLOYMENT": deployment,
            "LONGSHORE_INTERNAL_TOKEN": TOKEN,
        }
        self.sandbox_env = {
            **common,
            **SANDBOX_ENV,
            "LONGSHORE_SANDBOX_LISTEN": self.sandbox_addr,
            "LONGSHORE_SANDBOX_DEFAULT_IMAGE": image,
            **(sandbox_env or {}),
        }
        self.kanban_env = {
            **common,
            **KANBAN_ENV,
            "LONGSHORE_KANBAN_LISTEN": self.kanban_addr,
            "LONGSHORE_SANDBOX_ADDR": self.sandbox_addr,
        }
        if database_url:
            self.kanban_env["LONGSHORE_DATABASE_URL"] = database_url
        self.sandbox: ServiceProcess | None = None
        self.kanban: ServiceProcess | None = None
        self._starts = 0
        self._channel = open_channel(self.kanban_addr, internal_token=TOKEN)
        self.stub = kanban_service_pb2_grpc.KanbanServiceStub(self._channel)
        self.logs: list[ServiceProcess] = []

    # -- processes -----------------------------------------------------------

    def _process(self, name: str, module: str, env: dict[str, str], addr: str) -> ServiceProcess:
        self._starts += 1
        proc = ServiceProcess(
            ["python", "-m", module],
            env=env,
            health_addr=addr,
            name=f"{name}-{self._starts}",
            log_dir=self.home / "logs",
        )
        self.logs.append(proc)
        return proc

    def start_sandbox(self, timeout: float = 60) -> None:
        """Start (or restart) the sandbox manager and wait for SERVING."""
        self.sandbox = self._process(
            "sandbox", "services.sandbox", self.sandbox_env, self.sandbox_addr
        )
        self.sandbox.start(timeout)

    def start_kanban(self, timeout: float = 60) -> None:
        """Start (or restart) kanban and wait for SERVING."""
        self.kanban = self._process("kanban", "services.kanban", self.kanban_env, self.kanban_addr)
        self.kanban.start(timeout)

    @staticmethod
    def kill(proc: ServiceProcess | None) -> None:
        """``kill -9`` one of our own processes (its pid only) and reap it."""
        assert proc is not None
        proc.kill()
        proc.wait(10)

    def close(self) -> None:
        """Stop both services, then remove every container of the deployment."""
        self._channel.close()
        for proc in (self.kanban, self.sandbox):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop(10)
        for row in self.containers(all_states=True):
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(row["Id"], force=True, v=True)

    def log_tails(self) -> str:
        """The end of every service log (for assertion messages)."""
        return "\n".join(f"--- {p.name}\n{p.log_tail(30)}" for p in self.logs)

    # -- the board -------------------------------------------------------------

    def profile(self, name: str = "sb") -> None:
        """A sandbox profile on the test image that does not keep sandboxes."""
        self.stub.CreateProfile(
            pb.CreateProfileRequest(
                profile=profile_pb2.Profile(
                    name=name,
                    executor=profile_pb2.EXECUTOR_SANDBOX,
                    sandbox_spec=sandbox_pb2.SandboxSpec(image=self.image),
                    keep_sandbox=False,
                )
            ),
            timeout=30,
        )

    def task(self, title: str, script: str, assignee: str = "sb") -> str:
        """A sandbox task running ``sh -c script``; returns its id."""
        return self.stub.CreateTask(
            pb.CreateTaskRequest(
                task=S.Task(title=title, assignee=assignee, command=["sh", "-c", script])
            ),
            timeout=30,
        ).task.task_id

    def get(self, task_id: str) -> S.Task:
        return self.stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=10).task

    def runs(self, task_id: str) -> list[run_pb2.TaskRun]:
        return list(
            self.stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=task_id), timeout=10).runs
        )

    def events(self, task_id: str) -> list[Any]:
        return list(
            self.stub.ListTaskEvents(
                pb.ListTaskEventsRequest(task_id=task_id, page_size=1000), timeout=10
            ).events
        )

    def wait_running(self, task_ids: list[str], timeout: float = 60) -> None:
        """Until every task has a run whose command started (a sandbox recorded)."""

        def started() -> bool:
            return all(any(r.sandbox_id for r in self.runs(t)) for t in task_ids)

        wait_for("the commands to start", started, timeout)

    def wait_done(self, task_ids: list[str], timeout: float) -> None:
        """Until every task is done; fails at once if one is blocked."""

        def done() -> bool:
            statuses = {t: self.get(t) for t in task_ids}
            blocked = [t for t, task in statuses.items() if task.status == S.TASK_STATUS_BLOCKED]
            assert not blocked, f"blocked by the fault: {[statuses[t] for t in blocked]}"
            return all(task.status == S.TASK_STATUS_DONE for task in statuses.values())

        try:
            wait_for("every task done", done, timeout, every=0.3)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.log_tails()}") from None

    def containers(self, *, all_states: bool = False) -> list[dict[str, Any]]:
        """The deployment's containers (label-filtered)."""
        return list(
            self.client.api.containers(
                all=all_states, filters={"label": f"{DEPLOYMENT_LABEL}={self.deployment}"}
            )
        )

    # -- what every fault test checks -----------------------------------------

    def assert_recovered(self, task_ids: list[str], *, expect_platform_failures: bool) -> None:
        """Every task done exactly once, failures all the platform's, nothing left behind."""
        platform_runs = 0
        for task_id in task_ids:
            task = self.get(task_id)
            assert task.status == S.TASK_STATUS_DONE, task
            assert task.failure_count == 0, task
            completed = [e for e in self.events(task_id) if e.kind == "completed"]
            assert len(completed) == 1, [e.kind for e in self.events(task_id)]
            assert "gave_up" not in [e.kind for e in self.events(task_id)]
            runs = self.runs(task_id)
            assert [r.status for r in runs].count(run_pb2.RUN_STATUS_SUCCEEDED) == 1
            for run in runs:
                if run.status == run_pb2.RUN_STATUS_SUCCEEDED:
                    continue
                platform_runs += 1
                assert run.failure_class == run_pb2.FAILURE_CLASS_PLATFORM, run
                assert not run.counted_failure, run
        if expect_platform_failures:
            assert platform_runs >= 1, "the fault failed no run: it was not injected mid-run"
        # Done tasks release their sandboxes (force): none may be left behind.
        wait_for("no container left", lambda: not self.containers(all_states=True), 30)


@contextlib.contextmanager
def stack(
    home: Path,
    deployment: str,
    image: str,
    client: docker.DockerClient,
    **kw: Any,
) -> Iterator[Stack]:
    """A :class:`Stack` that is always closed (processes stopped, containers removed)."""
    built = Stack(home, deployment, image, client, **kw)
    try:
        yield built
    finally:
        built.close()
