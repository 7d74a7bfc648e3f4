"""The compose stack end to end: from nothing to a task run in a sandbox and back.

The scenario of issue 7, on the real engine, through ``scripts/compose-up.sh`` and
``scripts/compose-down.sh`` (what ``make up`` / ``make down`` run) and the
``longshore`` CLI on the host: bring the stack up; create a profile and a task
through the gateway; the task runs in a labelled sandbox and completes; the
dashboard serves the board with that task; traces from every service reach a
receiver; restart the stack and find the task history intact and the persistent
sandbox reused; tear down and find nothing of the stack left. On the way, the
exposure of issue 10: the gateway and the dashboard are published on 127.0.0.1
only, and no container or image of the stack carries the sandbox label.

Isolation from a user's stack on the same engine: its own compose project
(``ls<run_id>``), env file, image tag and published ports, the run label on every
container, network, volume and image (an override file adds it), and the test
deployment on every sandbox; the finaliser tears down even on failure. Timings
and image sizes go to ``test-artifacts/compose-e2e.json`` and the terminal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any, TypeVar

import docker
import grpc
import pytest
import yaml
from longshore.kanban.v1 import kanban_service_pb2, kanban_service_pb2_grpc

from tests.support.docker_env import RUN_LABEL
from tests.support.images import build_busybox_image
from tests.support.net import free_port
from tests.support.otlp import OtlpReceiver

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "longshore"
SERVICES = ("sandbox", "kanban", "gateway", "dashboard")
TRACED = {f"longshore-{name}" for name in SERVICES}
SANDBOX_LABEL = "io.longshore.managed"
LOCAL_BASE = "longshore/python-base:3.11"
ARTIFACT = REPO / "test-artifacts" / "compose-e2e.json"
T = TypeVar("T")

pytestmark = pytest.mark.timeout(900)


def compose_binary() -> list[str]:
    """Compose v2 when the engine has it, else docker-compose (1.29 here)."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if v2.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor docker-compose is installed", pytrace=False)


def wait_until(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """Call ``probe`` until it returns a value; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)
        time.sleep(0.5)


def docker0_address(client: docker.DockerClient) -> str:
    """The host's address on the default bridge: containers on any bridge reach it."""
    config = client.networks.get("bridge").attrs.get("IPAM", {}).get("Config") or [{}]
    gateway = config[0].get("Gateway")
    if gateway:
        return str(gateway)
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    assert match, f"no IPv4 address on docker0: {out!r}"
    return match.group(1)


@dataclass
class Stack:
    """One isolated compose stack of this test run."""

    project: str
    deployment: str
    env_file: Path
    override: Path
    environ: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def env(self, key: str) -> str:
        """A value of the stack's env file."""
        for line in self.env_file.read_text().splitlines():
            if line.startswith(key + "="):
                return line.split("=", 1)[1]
        raise KeyError(key)

    def script(self, name: str, timing: str, **extra: str) -> None:
        """Run ``scripts/<name>`` for this stack, timing it; fail with its output."""
        start = time.monotonic()
        proc = subprocess.run(
            ["bash", str(REPO / "scripts" / name)],
            env={**self.environ, **extra},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        self.timings[timing] = round(time.monotonic() - start, 1)
        assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stderr[-4000:]}"

    def compose(self, *args: str) -> str:
        """Run compose on this stack and return its stdout."""
        cmd = [*compose_binary(), "-f", str(REPO / "compose.yaml"), "-f", str(self.override)]
        cmd += ["--env-file", str(self.env_file), "-p", self.project, *args]
        proc = subprocess.run(
            cmd, env=self.environ, cwd=REPO, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr[-2000:]}"
        return proc.stdout

    @property
    def gateway(self) -> str:
        return self.env("LONGSHORE_GATEWAY_PUBLISH")

    @property
    def dashboard(self) -> str:
        return f"http://{self.env('LONGSHORE_DASHBOARD_PUBLISH')}"

    def cli(self, *args: str) -> Any:
        """Run the ``longshore`` CLI on the host with ``--json``; return its output."""
        auth = ["--addr", self.gateway, "--api-key", self.env("LONGSHORE_API_KEY")]
        proc = subprocess.run(
            [str(CLI), *auth, "--json", *args],
            env={**self.environ, "LONGSHORE_HOME": str(self.env_file.parent / "cli-home")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"longshore {' '.join(args)}: {proc.stderr[-2000:]}"
        return json.loads(proc.stdout) if proc.stdout.strip() else None


def override_file(path: Path, run_id: str) -> Path:
    """Compose override putting the run label on every container, network and volume."""
    doc = {
        "services": {name: {"labels": {RUN_LABEL: run_id}} for name in SERVICES},
        # Top-level labels are replaced, not merged, by an override: repeat the component.
        "networks": {
            "longshore": {"labels": {"io.longshore.component": "network", RUN_LABEL: run_id}}
        },
        "volumes": {
            name: {"labels": {"io.longshore.component": name, RUN_LABEL: run_id}}
            for name in ("kanban-data", "postgres-data")
        },
    }
    path.write_text(json.dumps(doc, indent=2))  # JSON is YAML
    return path


@pytest.fixture
def stack(
    docker_client: docker.DockerClient,
    run_id: str,
    test_deployment: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Stack]:
    """An env file and override for a stack of this run; torn down in the finaliser."""
    assert CLI.exists(), f"{CLI} is missing: run `make bootstrap`"
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LONGSHORE_", "OTEL_", "COMPOSE_", "PROFILES", "VOLUMES"))
    }
    environ.update(
        COMPOSE_PROJECT_NAME=f"ls{run_id}",
        LONGSHORE_ENV_FILE=str(tmp_path / "stack.env"),
        LONGSHORE_COMPOSE_FILES=str(override_file(tmp_path / "compose.test.yaml", run_id)),
        LONGSHORE_IMAGE_TAG=f"t{run_id}",
        LONGSHORE_IMAGE_LABELS=f"{RUN_LABEL}={run_id}",
    )
    stack = Stack(
        project=f"ls{run_id}",
        deployment=test_deployment,
        env_file=tmp_path / "stack.env",
        override=tmp_path / "compose.test.yaml",
        environ=environ,
    )
    try:
        yield stack
    finally:
        if stack.env_file.exists():
            subprocess.run(
                ["bash", str(REPO / "scripts" / "compose-down.sh")],
                env={**environ, "VOLUMES": "1"},
                capture_output=True,
                timeout=300,
                check=False,
            )
        report(request, stack, docker_client, run_id)


def report(
    request: pytest.FixtureRequest, stack: Stack, client: docker.DockerClient, run_id: str
) -> None:
    """Write timings and image sizes to test-artifacts/ and the terminal."""
    sizes = {}
    for name in SERVICES:
        try:
            image = client.images.get(f"longshore/{name}:t{run_id}")
        except docker.errors.ImageNotFound:
            continue
        sizes[name] = round(image.attrs["Size"] / 1e6)
    result = {"timings_seconds": stack.timings, "image_size_mb": sizes}
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(result, indent=2) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\ncompose e2e: {json.dumps(result)}")


def start_env_file(stack: Stack, receiver: OtlpReceiver) -> None:
    """Write the stack's env file the way `make up` does, with this test's values."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "compose-env.sh"), str(stack.env_file)],
        env={
            **stack.environ,
            "LONGSHORE_DEPLOYMENT": stack.deployment,
            # Own ports (a user's stack may hold the defaults); the address is the default's.
            "LONGSHORE_GATEWAY_PUBLISH": f"127.0.0.1:{free_port()}",
            "LONGSHORE_DASHBOARD_PUBLISH": f"127.0.0.1:{free_port()}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def kanban_stub(stack: Stack) -> tuple[grpc.Channel, kanban_service_pb2_grpc.KanbanServiceStub]:
    """A generated stub on the gateway, presenting the first API key."""
    channel = grpc.insecure_channel(stack.gateway)
    return channel, kanban_service_pb2_grpc.KanbanServiceStub(channel)


def task_runs(stack: Stack, task_id: str) -> list[Any]:
    """The task's runs, through the gateway."""
    channel, stub = kanban_stub(stack)
    with channel:
        reply = stub.ListTaskRuns(
            kanban_service_pb2.ListTaskRunsRequest(task_id=task_id, page_size=50),
            metadata=[("authorization", f"Bearer {stack.env('LONGSHORE_API_KEY')}")],
            timeout=10,
        )
    return list(reply.runs)


def task_events(stack: Stack, task_id: str) -> list[tuple[int, str]]:
    """The task's event history (id, kind), through the gateway."""
    channel, stub = kanban_stub(stack)
    with channel:
        reply = stub.ListTaskEvents(
            kanban_service_pb2.ListTaskEventsRequest(task_id=task_id, page_size=500),
            metadata=[("authorization", f"Bearer {stack.env('LONGSHORE_API_KEY')}")],
            timeout=10,
        )
    return [(e.event_id, e.kind) for e in reply.events]


def wait_done(stack: Stack, task_id: str, timeout: float = 90) -> dict[str, Any]:
    """Wait until the task is done (fail at once if it ends any other way)."""

    def probe() -> dict[str, Any] | None:
        task: dict[str, Any] = stack.cli("task", "show", task_id)
        assert task["status"] not in ("TASK_STATUS_BLOCKED", "TASK_STATUS_ARCHIVED"), task
        return task if task["status"] == "TASK_STATUS_DONE" else None

    return wait_until(f"task {task_id} to be done", probe, timeout)


def dashboard_board_tasks(stack: Stack, board_id: str) -> list[dict[str, Any]]:
    """Log in to the dashboard with the API key and read the board's tasks."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    form = opener.open(stack.dashboard + "/login", timeout=10).read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token, "the login page has no API-key form"
    fields = {"csrf_token": token.group(1), "next": f"/boards/{board_id}"}
    fields["api_key"] = stack.env("LONGSHORE_API_KEY")
    page = opener.open(stack.dashboard + "/login", urllib.parse.urlencode(fields).encode(), 10)
    assert page.status == 200 and page.geturl().endswith(f"/boards/{board_id}"), page.geturl()
    api = opener.open(f"{stack.dashboard}/api/boards/{board_id}/tasks", timeout=10)
    tasks: list[dict[str, Any]] = json.loads(api.read())["tasks"]
    return tasks


def assert_published_on_loopback_only(stack: Stack, client: docker.DockerClient) -> None:
    """The engine publishes the gateway and the dashboard on 127.0.0.1, nothing else at all."""
    project = {"label": f"com.docker.compose.project={stack.project}"}
    containers = client.containers.list(filters=project)
    by_service = {c.labels["com.docker.compose.service"]: c for c in containers}
    assert set(by_service) == set(SERVICES), sorted(by_service)
    for name, container in by_service.items():
        ports = container.attrs["NetworkSettings"]["Ports"] or {}
        bindings = [b for binds in ports.values() for b in binds or []]
        expected = {"gateway": stack.gateway, "dashboard": stack.dashboard.split("//", 1)[1]}
        if name in expected:
            assert [f"{b['HostIp']}:{b['HostPort']}" for b in bindings] == [expected[name]]
            assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, (name, bindings)
        else:
            assert bindings == [], (name, bindings)
        # Service containers are not sandboxes: neither they nor their images say so.
        assert SANDBOX_LABEL not in container.labels, (name, container.labels)
        assert container.labels["io.longshore.component"] == name
        assert SANDBOX_LABEL not in (container.image.labels or {}), name


def sandboxes_of(client: docker.DockerClient, deployment: str, task_id: str) -> list[Any]:
    """The engine's containers for one task of one deployment."""
    filters = {
        "label": [f"io.longshore.deployment={deployment}", f"io.longshore.task-id={task_id}"]
    }
    return list(client.containers.list(all=True, filters=filters))


def test_compose_stack_from_nothing_to_teardown(
    stack: Stack,
    docker_client: docker.DockerClient,
    sandbox_image: str,
    run_id: str,
) -> None:
    """Issue 7's scenario, step by step; see the module docstring."""
    started = time.monotonic()
    receiver = OtlpReceiver(host=docker0_address(docker_client)).start()
    try:
        start_env_file(stack, receiver)
        stack.script("compose-up.sh", "make_up_seconds")
        states = stack.compose("ps")
        for name in SERVICES:
            assert re.search(rf"{name}.*\(healthy\)", states), states
        assert_published_on_loopback_only(stack, docker_client)

        # A profile and a persistent task through the gateway, with the host's CLI.
        stack.cli("profile", "create", "worker", "--executor", "sandbox", "--image", sandbox_image,
                  "--keep-sandbox")  # fmt: skip
        created = stack.cli("task", "create", "compose e2e", "--assignee", "worker", "--status",
                            "ready", "--sh", "echo ran-in-$(hostname)")  # fmt: skip
        task_id = created["task"]["task_id"]
        task = wait_done(stack, task_id)

        # It ran in one labelled sandbox of this deployment, left running (persistent).
        (sandbox,) = sandboxes_of(docker_client, stack.deployment, task_id)
        labels = sandbox.labels
        assert labels["io.longshore.managed"] == "1" and labels["io.longshore.profile"] == "worker"
        assert labels["io.longshore.persist"] == "true"
        assert sandbox.id == task["sandbox_id"] and sandbox.status == "running"
        started_at = sandbox.attrs["State"]["StartedAt"]
        (first_run,) = task_runs(stack, task_id)
        assert first_run.exit_code == 0 and first_run.sandbox_id == sandbox.id

        # The dashboard serves the board with that task.
        board = [t for t in dashboard_board_tasks(stack, "default") if t["task_id"] == task_id]
        assert board and board[0]["status"] == "done", board

        # Traces from every service reach the receiver.
        receiver.wait_for(lambda spans: {s.service_name for s in spans} >= TRACED, timeout=60)
        history = task_events(stack, task_id)

        # Restart: history intact, the persistent sandbox reused (same container, never restarted).
        stack.script("compose-down.sh", "down_seconds")
        stack.script("compose-up.sh", "restart_up_seconds")
        assert task_events(stack, task_id)[: len(history)] == history
        assert stack.cli("task", "show", task_id)["status"] == "TASK_STATUS_DONE"
        stack.cli("task", "move", task_id, "ready")
        wait_done(stack, task_id)
        runs = task_runs(stack, task_id)
        assert len(runs) == 2 and {r.sandbox_id for r in runs} == {sandbox.id}, runs
        (again,) = sandboxes_of(docker_client, stack.deployment, task_id)
        assert again.id == sandbox.id and again.attrs["State"]["StartedAt"] == started_at

        # Tear down: no container, network or volume of the stack or its deployment left.
        stack.script("compose-down.sh", "down_volumes_seconds", VOLUMES="1")
        project = {"label": f"com.docker.compose.project={stack.project}"}
        assert docker_client.containers.list(all=True, filters=project) == []
        assert docker_client.networks.list(filters=project) == []
        assert docker_client.volumes.list(filters=project) == []
        deployment = {"label": f"io.longshore.deployment={stack.deployment}"}
        assert docker_client.containers.list(all=True, filters=deployment) == []
    finally:
        receiver.stop()
        stack.timings["test_seconds"] = round(time.monotonic() - started, 1)


def run_script(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/<name>`` with a clean environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSHORE_", "COMPOSE_"))}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / name), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def env_values(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs if not k.startswith("#")}


def test_env_file_is_generated_once_and_only_hashes_reach_the_gateway(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    first = run_script(
        "compose-env.sh", str(env_file), env={"LONGSHORE_GATEWAY_PUBLISH": "127.0.0.1:50999"}
    )
    assert first.returncode == 0, first.stderr
    values = env_values(env_file)
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert values["LONGSHORE_GATEWAY_PUBLISH"] == "127.0.0.1:50999"
    assert values["LONGSHORE_DASHBOARD_PUBLISH"] == "127.0.0.1:8080"
    key, dash = values["LONGSHORE_API_KEY"], values["LONGSHORE_DASHBOARD_API_KEY"]
    assert key.startswith("lsk_") and dash.startswith("lsk_") and key != dash
    entries = values["LONGSHORE_GATEWAY_API_KEYS"].split(",")
    assert entries == [
        f"admin:admin:{hashlib.sha256(key.encode()).hexdigest()}",
        f"dashboard:read+write:{hashlib.sha256(dash.encode()).hexdigest()}",
    ]
    assert len(values["LONGSHORE_DASHBOARD_SESSION_SECRET"]) >= 32
    assert values["DOCKER_GID"].isdigit()

    # A second run changes nothing; an emptied value is filled, the others are kept.
    run_script("compose-env.sh", str(env_file), env={})
    assert env_values(env_file) == values
    env_file.write_text(env_file.read_text().replace(values["LONGSHORE_INTERNAL_TOKEN"], ""))
    run_script("compose-env.sh", str(env_file), env={})
    again = env_values(env_file)
    assert again["LONGSHORE_INTERNAL_TOKEN"] not in ("", values["LONGSHORE_INTERNAL_TOKEN"])
    assert {k: v for k, v in again.items() if k != "LONGSHORE_INTERNAL_TOKEN"} == {
        k: v for k, v in values.items() if k != "LONGSHORE_INTERNAL_TOKEN"
    }


@pytest.mark.parametrize("profiles", [(), ("postgres",), ("tracing",), ("postgres", "tracing")])
def test_compose_file_validates_with_each_profile(
    tmp_path: Path, profiles: tuple[str, ...]
) -> None:
    env_file = tmp_path / "x.env"
    assert run_script("compose-env.sh", str(env_file), env={}).returncode == 0
    cmd = [*compose_binary(), "-f", str(REPO / "compose.yaml"), "--env-file", str(env_file)]
    cmd += ["-p", "lsconfigcheck"]
    for profile in profiles:
        cmd += ["--profile", profile]
    proc = subprocess.run(
        [*cmd, "config"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    # Compose v1 lists every service in `config`, v2 only the active profiles' ones.
    assert {*SERVICES, *profiles} <= set(services)
    assert all(services[name]["profiles"] == [name] for name in profiles)


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("COMPOSE_PROJECT_NAME=lsconfigcheck\n")
    cmd = [*compose_binary(), "-f", str(REPO / "compose.yaml"), "--env-file", str(empty), "config"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSHORE_", "COMPOSE_"))}
    proc = subprocess.run(cmd, cwd=REPO, env=base, capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "run make up" in proc.stderr


def test_an_old_env_file_publishing_on_every_interface_moves_to_loopback(tmp_path: Path) -> None:
    """The retired BIND/PORT pair (BIND=0.0.0.0 was the old default) keeps its port only."""
    env_file = tmp_path / "old.env"
    env_file.write_text(
        "COMPOSE_PROJECT_NAME=lsold\nLONGSHORE_GATEWAY_BIND=0.0.0.0\n"
        "LONGSHORE_GATEWAY_PORT=50998\nLONGSHORE_DASHBOARD_BIND=127.0.0.1\n"
        "LONGSHORE_DASHBOARD_PORT=8089\n"
    )
    env_file.chmod(0o600)
    proc = run_script("compose-env.sh", str(env_file), env={})
    assert proc.returncode == 0, proc.stderr
    values = env_values(env_file)
    assert values["LONGSHORE_GATEWAY_PUBLISH"] == "127.0.0.1:50998"
    assert values["LONGSHORE_DASHBOARD_PUBLISH"] == "127.0.0.1:8089"
    assert not {k for k in values if k.endswith(("_BIND", "_PORT")) and "GATEWAY" in k}
    assert "LONGSHORE_GATEWAY_PUBLISH=0.0.0.0:50998" in proc.stderr  # how to open it again


def test_the_local_base_image_carries_no_sandbox_label(docker_client: docker.DockerClient) -> None:
    try:
        image = docker_client.images.get(LOCAL_BASE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{LOCAL_BASE} is not built on this engine (make base-image builds it)")
    labels = image.labels or {}
    assert SANDBOX_LABEL not in labels, labels
    assert labels.get("io.longshore.component") == "python-base"


def test_an_old_labelled_base_is_reimported_without_the_sandbox_label(
    docker_client: docker.DockerClient, run_id: str, run_labels: dict[str, str]
) -> None:
    """base-image.sh reuses a local base only once it no longer carries the label."""
    tag = f"longshore-test/old-base:{run_id}"
    build_busybox_image(docker_client, tag, {**run_labels, SANDBOX_LABEL: "1"})
    try:
        proc = run_script(
            "base-image.sh",
            env={
                "LONGSHORE_LOCAL_BASE": tag,
                # An official image that is never present, so the local one is chosen.
                "LONGSHORE_OFFICIAL_BASE": f"longshore-test/absent:{run_id}",
            },
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == tag
        assert "re-importing" in proc.stderr
        labels = docker_client.images.get(tag).labels or {}
        assert SANDBOX_LABEL not in labels and labels["io.longshore.component"] == "python-base"
    finally:
        # The re-import drops the run label too: remove this run's tag by name.
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)
