"""The `longshore` console script against the real stack (sandbox, kanban, gateway).

The dispatcher loop is off in this stack so that `longshore dispatch` decides
every tick itself and its output is deterministic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.gateway.stack import RealStack, real_stack

DEFAULT_ASSIGNEE = "lane"


def cli_argv() -> list[str]:
    script = Path(sys.executable).parent / "longshore"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clients.cli.main"]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str
) -> Iterator[RealStack]:
    home = tmp_path_factory.mktemp("cli-stack")
    kanban_env = {
        "LONGSHORE_KANBAN_DISPATCHER_ENABLED": "false",
        "LONGSHORE_KANBAN_DEFAULT_ASSIGNEE": DEFAULT_ASSIGNEE,
    }
    with real_stack(
        home, deployment=f"t{run_id}-cli", image=sandbox_image, kanban_env=kanban_env
    ) as s:
        yield s


class Cli:
    def __init__(self, stack: RealStack, image: str) -> None:
        self.stack = stack
        self.image = image
        self.env = {
            **os.environ,
            "LONGSHORE_HOME": str(stack.home / "cli-home"),
            "LONGSHORE_GATEWAY_ADDR": stack.gateway_addr,
            "LONGSHORE_API_KEY": stack.keys.admin,
        }

    def run(
        self, *args: str, key: str | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if key is not None:
            env["LONGSHORE_API_KEY"] = key
        proc = subprocess.run(
            [*cli_argv(), *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        if ok:
            assert proc.returncode == 0, f"{args}: {proc.stderr}\n{self.stack.logs()}"
        return proc

    def json(self, *args: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture(scope="module")
def cli(stack: RealStack, sandbox_image: str) -> Cli:
    return Cli(stack, sandbox_image)


def test_status_human_and_json(cli: Cli) -> None:
    out = cli.run("status").stdout
    assert "kanban" in out and "sandbox" in out and "serving" in out
    data = cli.json("status")
    assert {b["name"] for b in data["backends"]} == {"kanban", "sandbox"}


def test_user_errors_are_one_line_and_non_zero(cli: Cli) -> None:
    proc = cli.run("status", key="", ok=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: no API key")
    proc = cli.run("status", key="lsk_wrong", ok=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: the gateway refused the API key (unknown API key)")
    proc = cli.run("task", "show", "t-missing", ok=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: not found: ")
    proc = cli.run("status", "--addr", "127.0.0.1:1", ok=False)
    assert proc.stderr.startswith("error: cannot reach the gateway at 127.0.0.1:1")
    proc = cli.run("task", "move", "x", "sideways", ok=False)
    assert proc.returncode == 2


def test_board_profile_and_task_lifecycle(cli: Cli) -> None:
    assert "Created board cli-b" in cli.run("board", "create", "cli-b", "--name", "CLI").stdout
    assert "cli-b" in cli.run("board", "ls").stdout
    cli.run("profile", "create", DEFAULT_ASSIGNEE, "--executor", "none")
    cli.run("profile", "create", "ext", "--executor", "external", "--max-in-progress", "1")
    profiles = {p["name"] for p in cli.json("profile", "ls")["profiles"]}
    assert {DEFAULT_ASSIGNEE, "ext"} <= profiles
    assert "external" in cli.run("profile", "show", "ext").stdout

    parent = cli.json("task", "create", "parent", "--board", "cli-b")["task"]["task_id"]
    child = cli.json("task", "create", "child", "--board", "cli-b")["task"]["task_id"]
    assert "[todo]" in cli.run("task", "link", parent, child).stdout
    assert "waiting" in cli.run("task", "show", child).stdout.lower()
    assert "[blocked]" in cli.run("task", "block", parent, "needs review").stdout
    assert "[ready]" in cli.run("task", "unblock", parent).stdout
    assert "Assigned to ext" in cli.run("task", "assign", parent, "ext").stdout
    listed = cli.json("task", "ls", "--board", "cli-b")["tasks"]
    assert {t["task_id"] for t in listed} == {parent, child}
    assert "[archived]" in cli.run("task", "move", child, "archived").stdout
    cli.run("task", "rm", child)
    assert cli.run("task", "ls", "--board", "cli-b", "--status", "archived").stdout.strip() == (
        "(none)"
    )


def test_profile_allowlist_and_retry_flags(cli: Cli) -> None:
    cli.run(
        "profile",
        "create",
        "flagged",
        "--executor",
        "external",
        "--image",
        cli.image,
        "--allow-image",
        "alt:1",
        "--allow-image",
        "alt:2",
        "--retry-attempts",
        "4",
        "--retry-initial-backoff",
        "2",
        "--retry-max-backoff",
        "30",
    )
    shown = cli.json("profile", "show", "flagged")
    assert shown["allowed_images"] == ["alt:1", "alt:2"]
    assert shown["retry_policy"] == {
        "max_attempts": 4,
        "initial_backoff": "2s",
        "max_backoff": "30s",
    }
    # One retry field changes; the others are kept (set reads the profile first).
    cli.run("profile", "set", "flagged", "--retry-attempts", "6", "--allow-image", "alt:3")
    shown = cli.json("profile", "show", "flagged")
    assert shown["retry_policy"]["max_attempts"] == 6
    assert shown["retry_policy"]["max_backoff"] == "30s"
    assert shown["allowed_images"] == ["alt:3"]
    assert "alt:3" in cli.run("profile", "show", "flagged").stdout
    proc = cli.run("profile", "set", "flagged", "--retry-attempts", "101", ok=False)
    assert proc.returncode == 1 and "retry_policy.max_attempts" in proc.stderr
    proc = cli.run(
        "task",
        "create",
        "t",
        "--assignee",
        "flagged",
        "--image",
        "alt:9",
        "--cmd",
        "true",
        ok=False,
    )
    assert proc.returncode == 1 and "'alt:9' is not allowed for profile 'flagged'" in proc.stderr


def test_dispatch_names_its_decisions(cli: Cli) -> None:
    cli.run("board", "create", "cli-d")
    task = cli.json("task", "create", "auto", "--board", "cli-d")["task"]["task_id"]
    plan = cli.run("dispatch", "--board", "cli-d", "--dry-run").stdout
    assert f"Auto-assigned to kanban.default_assignee='{DEFAULT_ASSIGNEE}': {task}" in plan
    assert "Dry run (nothing written)" in plan
    # The dry run wrote nothing: the task is still unassigned.
    shown = cli.json("task", "show", task)
    assert shown.get("assignee", "") == ""
    real = cli.run("dispatch", "--board", "cli-d").stdout
    assert f"Auto-assigned to kanban.default_assignee='{DEFAULT_ASSIGNEE}': {task}" in real
    assert f"Skipped ({DEFAULT_ASSIGNEE} is not spawnable): {task}" in real
    data = cli.json("dispatch", "--board", "cli-d", "--dry-run")
    assert data["result"]["dry_run"] is True


def test_sandbox_task_runs_and_its_logs_follow(cli: Cli) -> None:
    cli.run("board", "create", "cli-s")
    cli.run(
        "profile",
        "create",
        "runner",
        "--executor",
        "sandbox",
        "--image",
        cli.image,
        "--max-in-progress",
        "1",
        "--keep-sandbox",
    )
    first = cli.json(
        "task",
        "create",
        "hello",
        "--board",
        "cli-s",
        "--assignee",
        "runner",
        "--sh",
        "echo hello-from-cli; sleep 1",
    )["task"]["task_id"]
    second = cli.json(
        "task",
        "create",
        "later",
        "--board",
        "cli-s",
        "--assignee",
        "runner",
        "--cmd",
        "true",
    )["task"]["task_id"]
    out = cli.run("dispatch", "--board", "cli-s").stdout
    assert f": {first}" in out and "Spawned (runner" in out
    assert f"Deferred (runner at per-profile cap, 1 running): {second}" in out
    logs = cli.run("task", "logs", first, "-f").stdout
    assert "hello-from-cli" in logs
    deadline = time.monotonic() + 30
    while cli.json("task", "show", first)["status"] != "TASK_STATUS_DONE":
        assert time.monotonic() < deadline, cli.stack.logs()
        time.sleep(0.3)
    boxes = cli.json("sandbox", "ls", "--profile", "runner")["sandboxes"]
    assert boxes, "the run's sandbox is listed"
    box = boxes[0]["sandbox_id"]
    assert boxes[0]["state"] == "SANDBOX_STATE_RUNNING"
    assert box[:12] in cli.run("sandbox", "ls").stdout
    proc = cli.run("sandbox", "exec", box, "--", "sh", "-c", "echo out; exit 3", ok=False)
    assert (proc.returncode, proc.stdout) == (3, "out\n")
    assert "Dry run:" in cli.run("sandbox", "reap", "--dry-run").stdout
    assert f"Removing sandbox {box}" in cli.run("sandbox", "rm", box).stdout
