"""`longshore sandbox run|start|ps|kill` against the real stack (gateway, manager, engine)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import docker
import pytest
from longshore.sandbox.v1 import sandbox_service_pb2

from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.integration.sandbox.conftest import remove_deployment
from tests.support.processes import REPO_ROOT, service_env


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str
) -> Iterator[RealStack]:
    deployment = f"t{run_id}-cliprocs"
    client = docker.from_env()
    try:
        with real_stack(
            tmp_path_factory.mktemp("cli-procs"), deployment=deployment, image=sandbox_image
        ) as s:
            yield s
    finally:
        remove_deployment(client, deployment)
        client.close()


@pytest.fixture(scope="module")
def box(stack: RealStack) -> str:
    with stack.channel() as channel:
        return (
            Stubs(channel)
            .sandbox.AcquireSandbox(
                sandbox_service_pb2.AcquireSandboxRequest(task_id="t-cli", profile="coder"),
                timeout=60,
                metadata=auth(stack.keys.admin),
            )
            .sandbox.sandbox_id
        )


def cli(
    stack: RealStack, *args: str, stdin: bytes = b"", key: str = ""
) -> subprocess.CompletedProcess[bytes]:
    env = service_env(
        {
            "LONGSHORE_HOME": str(stack.home / "cli-home"),
            "LONGSHORE_GATEWAY_ADDR": stack.gateway_addr,
            "LONGSHORE_API_KEY": key or stack.keys.admin,
        }
    )
    # This checkout's CLI (an installed `longshore` script may be another's).
    argv = [sys.executable, "-m", "clients.cli.main", *args]
    proc = subprocess.run(
        argv, env=env, input=stdin, capture_output=True, timeout=120, check=False, cwd=REPO_ROOT
    )
    assert b"Traceback" not in proc.stderr, proc.stderr
    return proc


def test_run_pipes_stdin_and_returns_the_exit_code(stack: RealStack, box: str) -> None:
    proc = cli(stack, "sandbox", "run", box, "--", "cat", stdin=b"piped through\n")
    assert (proc.returncode, proc.stdout) == (0, b"piped through\n")
    proc = cli(stack, "sandbox", "run", box, "--", "sh", "-c", "echo err >&2; exit 7")
    assert (proc.returncode, proc.stderr) == (7, b"err\n")
    proc = cli(stack, "sandbox", "run", "--tty", box, "--", "tty")
    assert proc.returncode == 0 and proc.stdout.startswith(b"/dev/pts/"), proc.stdout
    proc = cli(stack, "sandbox", "run", "--kill-after", "1", box, "--", "sleep", "300")
    assert proc.returncode == 124 and b"timed out" in proc.stderr


def test_start_ps_and_kill_by_tag(stack: RealStack, box: str) -> None:
    started = cli(stack, "sandbox", "start", "--tag", "svc", box, "--", "sleep", "300")
    assert started.returncode == 0 and b"Started proc-" in started.stdout
    listed = cli(stack, "--json", "sandbox", "ps", box)
    processes = json.loads(listed.stdout)["processes"]
    assert [p["tag"] for p in processes] == ["svc"]
    killed = cli(stack, "sandbox", "kill", box, "svc", "--signal", "9")
    assert killed.returncode == 0, killed.stderr
    table = cli(stack, "sandbox", "ps", box, "--all").stdout.decode()
    row = next(line for line in table.splitlines() if " svc " in line)
    assert "exited" in row and "signal 9" in row
    # A reader key may not run anything: the gateway's refusal, as the CLI says it.
    refused = cli(stack, "sandbox", "ps", box, key=stack.keys.reader)
    assert refused.returncode != 0 and b"permission" in refused.stderr.lower()
