"""`longshore sandbox cp|cat|ls SANDBOX:PATH` against the real stack (gateway, manager, engine)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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
    deployment = f"t{run_id}-clifiles"
    client = docker.from_env()
    try:
        with real_stack(
            tmp_path_factory.mktemp("cli-files"), deployment=deployment, image=sandbox_image
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


def run(
    stack: RealStack, *args: str, stdin: bytes = b"", ok: bool = True
) -> subprocess.CompletedProcess[bytes]:
    env = service_env(
        {
            "LONGSHORE_HOME": str(stack.home / "cli-home"),
            "LONGSHORE_GATEWAY_ADDR": stack.gateway_addr,
            "LONGSHORE_API_KEY": stack.keys.admin,
        }
    )
    # This checkout's CLI (an installed `longshore` script may be another's).
    argv = [sys.executable, "-m", "clients.cli.main", *args]
    proc = subprocess.run(
        argv, env=env, input=stdin, capture_output=True, timeout=120, check=False, cwd=REPO_ROOT
    )
    assert b"Traceback" not in proc.stderr, proc.stderr
    if ok:
        assert proc.returncode == 0, (args, proc.stderr)
    return proc


def test_cp_both_ways_cat_and_ls(stack: RealStack, box: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"alpha\n")
    blob = os.urandom(3 * 1024 * 1024 + 7)
    (tree / "sub" / "b.bin").write_bytes(blob)
    (tree / "sub" / "b.bin").chmod(0o640)
    out = run(stack, "sandbox", "cp", str(tree), f"{box}:/work", "--parents").stdout
    assert b"Copied 2 file(s)" in out
    assert run(stack, "sandbox", "cat", f"{box}:/work/a.txt").stdout == b"alpha\n"
    listing = run(stack, "sandbox", "ls", f"{box}:/work", "--depth", "2").stdout.decode()
    assert "/work/a.txt" in listing and "/work/sub/b.bin" in listing
    assert "-rw-r-----" in listing
    back = tmp_path / "back.bin"
    run(stack, "sandbox", "cp", f"{box}:/work/sub/b.bin", str(back))
    assert back.read_bytes() == blob
    run(stack, "sandbox", "cp", "-", f"{box}:/work/stdin.txt", stdin=b"from stdin")
    assert run(stack, "sandbox", "cp", f"{box}:/work/stdin.txt", "-").stdout == b"from stdin"


def test_errors_are_reported_not_tracebacks(stack: RealStack, box: str) -> None:
    missing = run(stack, "sandbox", "cat", f"{box}:/no/such", ok=False)
    assert missing.returncode != 0 and b"not found" in missing.stderr
    usage = run(stack, "sandbox", "cp", "a", "b", ok=False)
    assert usage.returncode != 0 and b"exactly one side" in usage.stderr
    # Listing sandboxes (no SANDBOX:PATH) still works.
    assert box[:12].encode() in run(stack, "sandbox", "ls").stdout


def test_the_docs_python_example_runs(stack: RealStack, box: str, tmp_path: Path) -> None:
    page = (REPO_ROOT / "docs" / "sandbox-files.md").read_text()
    example = page.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "hi.py"
    script.write_text(example)
    env = service_env(
        {"LONGSHORE_GATEWAY_ADDR": stack.gateway_addr, "LONGSHORE_API_KEY": stack.keys.admin}
    )
    proc = subprocess.run(
        [sys.executable, str(script), box], env=env, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert run(stack, "sandbox", "cat", f"{box}:/work/hi.py").stdout == b"print('hi')\n"
