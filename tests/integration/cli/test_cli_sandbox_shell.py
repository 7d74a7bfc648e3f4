"""`longshore sandbox shell` and the session examples (Python, Node) against the real stack.

The CLI reads lines from stdin and runs them in one session; the Python and
Node examples write a file, run commands whose state carries over, and read
back what they wrote. All go through the gateway to the real manager.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator

import docker
import pytest
from longshore.sandbox.v1 import sandbox_service_pb2, session_pb2

from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.integration.sandbox.conftest import remove_deployment
from tests.support.processes import REPO_ROOT, service_env

NODE_DIR = REPO_ROOT / "clients" / "node"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str
) -> Iterator[RealStack]:
    deployment = f"t{run_id}-clishell"
    client = docker.from_env()
    try:
        with real_stack(
            tmp_path_factory.mktemp("cli-shell"), deployment=deployment, image=sandbox_image
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
                sandbox_service_pb2.AcquireSandboxRequest(task_id="t-shell", profile="coder"),
                timeout=60,
                metadata=auth(stack.keys.admin),
            )
            .sandbox.sandbox_id
        )


def env_of(stack: RealStack) -> dict[str, str]:
    return service_env(
        {
            "LONGSHORE_HOME": str(stack.home / "cli-home"),
            "LONGSHORE_GATEWAY_ADDR": stack.gateway_addr,
            "LONGSHORE_API_KEY": stack.keys.admin,
        }
    )


def shell(stack: RealStack, *args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    # This checkout's CLI (an installed `longshore` script may be another's).
    argv = [sys.executable, "-m", "clients.cli.main", *args]
    proc = subprocess.run(
        argv,
        env=env_of(stack),
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert b"Traceback" not in proc.stderr, proc.stderr
    return proc


def sessions_of(stack: RealStack, box: str) -> list[session_pb2.Session]:
    with stack.channel() as channel:
        return list(
            Stubs(channel)
            .sandbox.ListSessions(
                session_pb2.ListSessionsRequest(sandbox_id=box),
                timeout=60,
                metadata=auth(stack.keys.admin),
            )
            .sessions
        )


def test_each_line_runs_in_one_session(stack: RealStack, box: str) -> None:
    lines = b'cd /etc\nexport WHO=cli\necho "$WHO in $(pwd)"\necho to-err >&2; false\n'
    proc = shell(stack, "sandbox", "shell", box, stdin=lines)
    assert proc.stdout == b"cli in /etc\n"
    assert b"to-err\n" in proc.stderr and b"[exit 1]" in proc.stderr
    assert proc.returncode == 1  # the last command's status
    # End of input closed the session.
    assert all(s.state == session_pb2.SESSION_STATE_CLOSED for s in sessions_of(stack, box))


def test_json_mode_and_a_shell_that_exits(stack: RealStack, box: str) -> None:
    proc = shell(stack, "--json", "sandbox", "shell", box, stdin=b"echo hi\nexit 4\necho never\n")
    decoder = json.JSONDecoder()
    text, objects = proc.stdout.decode(), []
    while text.strip():
        value, end = decoder.raw_decode(text.lstrip())
        objects.append(value)
        text = text.lstrip()[end:]
    assert [o["command"] for o in objects] == ["echo hi", "exit 4"]
    assert objects[1]["exit"]["session_ended"] is True
    assert b"shell ended" in proc.stderr


def test_the_python_example_runs(stack: RealStack, box: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "docs" / "examples" / "session.py"), box],
        env=env_of(stack),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == [
        "hello from /work/demo",
        "read back: hello from /work/demo",
    ]


def test_the_node_example_runs(stack: RealStack, box: str) -> None:
    node = shutil.which("node")
    assert node, "node is required (scripts/bootstrap.sh installs it)"
    assert (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "clients/node dependencies missing: run `bash scripts/bootstrap.sh node`"
    )
    proc = subprocess.run(
        [node, str(NODE_DIR / "session.js"), box],
        env=env_of(stack),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == [
        "hello from /work/node-demo",
        "read back: hello from /work/node-demo",
    ]
