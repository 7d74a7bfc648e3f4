"""Spare execs through the real gateway and manager, on the real engine.

A spare is a shell the manager started ahead in a running sandbox; a
compatible StartProcess takes it and the shell becomes the program, same
pid. The tests find spares as the sandbox's processes whose command line
says ``longshore-spare`` (what ``ps`` shows an operator), so "this start took
a spare" is "its pid was a spare's pid". Covered: a start after an acquire
takes one and one is made again; argv, env and workdir with quotes, spaces,
newlines and ``$(...)`` arrive literally and exactly as on the normal path
(same output and exit, also for a missing program or workdir); stdin, a
closed stdin, signals to the group and a timeout on a taken spare; a PTY or
another user take the normal path and leave the spare; spares are not
listed, not in the cap and do not make a sandbox busy; a release drops them
and the next acquire makes them again; a refused caller (another task's
token, at the manager; no scope, at the gateway) takes no spare; a manager
killed with SIGKILL leaves no spare running; a warm-pool member has its
spare before any task takes it.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import grpc
import pytest
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import pool_pb2, process_pb2, sandbox_pb2

from services.sandbox.manager import SandboxManager
from services.sandbox.model import Spec
from services.sandbox.processes import ProcessConfig
from services.sandbox.processes.spares import REFILL_DELAY_SECONDS
from tests.integration.gateway.stack import Stubs, auth, real_stack
from tests.integration.sandbox.conftest import remove_deployment
from tests.integration.sandbox.test_sandbox_interactive import (
    Rig,
    Seen,
    T,
    by_id,
    connect,
    exec_out,
    failure,
    pb,
    send,
    signal,
    start,
    wait_for,
)
from tests.integration.sandbox.test_sandbox_processes import Manager, acquire, spawn

MAX_PROCESSES = 3
#: Pids of the sandbox's spares (the pattern does not match its own command line).
SPARES_SCRIPT = (
    'for p in /proc/[0-9]*; do tr "\\0" " " < "$p/cmdline" 2>/dev/null'
    ' | grep -q "longshore-spar[e]" && echo "${p#/proc/}"; done'
)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str) -> Iterator[Rig]:
    deployment = f"t{run_id}-spares"
    home = tmp_path_factory.mktemp("spares-stack")
    client = docker.from_env()
    env = {"LONGSHORE_SANDBOX_MAX_PROCESSES_PER_SANDBOX": str(MAX_PROCESSES)}
    try:
        with (
            real_stack(
                home,
                deployment=deployment,
                image=sandbox_image,
                sandbox_env=env,
                # Kanban reconciles at start only: the pool a test sets belongs
                # to no profile and would be drained.
                kanban_env={"LONGSHORE_KANBAN_WARM_POOL_SYNC_SECONDS": "0"},
            ) as stack,
            stack.channel() as channel,
        ):
            rig = Rig(stack, Stubs(channel), deployment, "", "")
            rig.box = rig.acquire("t-spares")
            yield rig
    finally:
        remove_deployment(client, deployment)
        client.close()


def spares(rig: Rig, box: str) -> set[int]:
    return {int(line) for line in exec_out(rig, box, SPARES_SCRIPT).split()}


def ready_spares(rig: Rig, box: str, but: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
    """The sandbox's spares once there is one not in ``but`` (a bounded wait)."""
    found: set[int] = set()

    def ready() -> bool:
        found.clear()
        found.update(spares(rig, box))
        return bool(found - but)

    wait_for(ready, "a spare is ready")
    return found


def default_uid(rig: Rig, box: str) -> str:
    return exec_out(rig, box, "id -u").decode().strip()


def both_paths(rig: Rig, box: str, argv: list[str], **fields: object) -> tuple[Seen, Seen]:
    """The same start through a spare and through its own exec (another user: the same uid)."""
    before = ready_spares(rig, box)
    taken = start(rig, box, argv, **fields)
    assert taken.pid in before, "the start did not take a spare"
    via_spare = connect(rig, box, by_id(taken))
    after = ready_spares(rig, box, but=before)
    plain = start(rig, box, argv, user=default_uid(rig, box), **fields)
    assert plain.pid not in after, "a start as another user took a spare"
    via_exec = connect(rig, box, by_id(plain))
    return via_spare, via_exec


def test_a_start_after_acquire_takes_a_spare_and_another_is_made(rig: Rig) -> None:
    box = rig.acquire("t-first")
    before = ready_spares(rig, box)
    assert len(before) == 1  # sandbox.spare_processes_per_sandbox defaults to 1
    proc = start(rig, box, ["sleep", "300"])
    assert proc.pid in before and proc.argv == ["sleep", "300"]
    assert b"sleep" in exec_out(rig, box, f"cat /proc/{proc.pid}/cmdline")
    after = ready_spares(rig, box, but=before)
    assert proc.pid not in after and len(after) == 1
    listed = rig.stubs.sandbox.ListProcesses(
        process_pb2.ListProcessesRequest(sandbox_id=box), timeout=T, metadata=rig.admin
    ).processes
    assert [p.process_id for p in listed] == [proc.process_id]  # the new spare is not listed
    signal(rig, box, proc, 9)


def test_words_env_and_workdir_arrive_literally_and_as_on_the_normal_path(rig: Rig) -> None:
    words = ["it's", "a b", "one\ntwo", "$(id)", "`id`", '"q"', "\\n", "", "'", "-x", ";exit 3"]
    script = 'printf "[%s]" "$@"; printf "{%s}{%s}" "$K" "$PWD"'
    env = {"K": 'v\'\n$(id) "x" `id`', "L": ""}
    via_spare, via_exec = both_paths(
        rig, rig.box, ["sh", "-c", script, "zero", *words], env=env, workdir="/tmp"
    )
    expected = "".join(f"[{w}]" for w in words) + f"{{{env['K']}}}{{/tmp}}"
    assert via_spare.output.decode() == expected
    assert via_exec.output == via_spare.output
    assert via_spare.exit is not None and via_exec.exit is not None
    assert via_spare.exit.exit_code == via_exec.exit.exit_code == 0


@pytest.mark.parametrize(
    ("argv", "workdir", "code"),
    [
        (["no-such-program"], "", 127),
        (["true"], "/no/such/dir", 126),
        (["true"], "/etc/passwd", 126),
    ],
)
def test_a_missing_program_or_workdir_ends_as_on_the_normal_path(
    rig: Rig, argv: list[str], workdir: str, code: int
) -> None:
    via_spare, via_exec = both_paths(rig, rig.box, argv, workdir=workdir)
    assert via_spare.exit is not None and via_exec.exit is not None
    assert via_spare.exit.exit_code == via_exec.exit.exit_code == code
    assert via_spare.exit.signal == via_exec.exit.signal == 0
    if code == 127:
        assert b"no-such-program: not found" in via_spare.output
        assert b"no-such-program: not found" in via_exec.output
    else:
        assert via_spare.output == via_exec.output == b""


def test_stdin_reaches_the_program_and_unwanted_stdin_is_closed(rig: Rig) -> None:
    before = ready_spares(rig, rig.box)
    cat = start(rig, rig.box, ["cat"], stdin=True)
    assert cat.pid in before
    send(rig, rig.box, cat, b"hello\nworld", close=True)
    seen = connect(rig, rig.box, by_id(cat))
    assert seen.output == b"hello\nworld"
    assert seen.exit is not None and seen.exit.exit_code == 0
    # Without stdin, cat reads an end of input at once, on both paths.
    via_spare, via_exec = both_paths(rig, rig.box, ["cat"])
    assert via_spare.output == via_exec.output == b""
    assert via_spare.exit is not None and via_spare.exit.exit_code == 0


def test_a_signal_reaches_the_group_and_a_timeout_counts_from_the_start(rig: Rig) -> None:
    before = ready_spares(rig, rig.box)
    proc = start(rig, rig.box, ["sh", "-c", "sleep 300 & echo $!; wait"])
    assert proc.pid in before
    child = int(connect(rig, rig.box, by_id(proc), until=b"\n").output.strip())
    signal(rig, rig.box, proc, 15)
    seen = connect(rig, rig.box, by_id(proc))
    assert seen.exit is not None and (seen.exit.exit_code, seen.exit.signal) == (-1, 15)
    wait_for(
        lambda: b"gone" in exec_out(rig, rig.box, f"[ -e /proc/{child} ] || echo gone"),
        f"child {child} ended",
    )
    before = ready_spares(rig, rig.box, but={proc.pid})
    slow = start(
        rig, rig.box, ["sh", "-c", "sleep 300 & wait"], timeout=duration_pb2.Duration(seconds=1)
    )
    assert slow.pid in before
    seen = connect(rig, rig.box, by_id(slow))
    assert seen.exit is not None and seen.exit.timed_out and seen.exit.signal == 9


def test_a_pty_takes_the_normal_path_and_leaves_the_spare(rig: Rig) -> None:
    before = ready_spares(rig, rig.box)
    tty = start(rig, rig.box, ["tty"], pty=process_pb2.PtySize(rows=10, columns=40))
    assert tty.pid not in before
    seen = connect(rig, rig.box, by_id(tty))
    assert seen.exit is not None and seen.exit.exit_code == 0 and b"/dev/pts/" in seen.output
    assert before <= spares(rig, rig.box)


def test_spares_are_not_in_the_cap(rig: Rig) -> None:
    box = rig.acquire("t-cap")
    ready_spares(rig, box)
    procs = [start(rig, box, ["sleep", "300"]) for _ in range(MAX_PROCESSES)]
    ready_spares(rig, box, but={p.pid for p in procs})  # a spare waits beside a full sandbox
    code, details = failure(lambda: start(rig, box, ["true"]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_processes_per_sandbox" in details
    for proc in procs:
        signal(rig, box, proc, 9)


def test_a_release_drops_the_spares_and_an_acquire_makes_them_again(rig: Rig) -> None:
    box = rig.acquire("t-release")
    before = ready_spares(rig, box)
    rig.stubs.sandbox.ReleaseSandbox(
        pb.ReleaseSandboxRequest(sandbox_id=box), timeout=T, metadata=rig.admin
    )
    wait_for(lambda: not spares(rig, box), "the released sandbox's spares ended")
    assert rig.acquire("t-release") == box
    again = ready_spares(rig, box)
    assert not again & before
    proc = start(rig, box, ["true"])
    assert proc.pid in again


def test_a_refused_caller_takes_no_spare(rig: Rig) -> None:
    box = rig.acquire("t-work")
    before = ready_spares(rig, box)
    # Another task's sandbox token: refused at the manager.
    code, _ = failure(lambda: start(rig, box, ["true"], metadata=rig.worker("t-other")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # A key without the scope: refused at the gateway.
    code, _ = failure(lambda: start(rig, box, ["true"], metadata=auth(rig.stack.keys.reader)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert spares(rig, box) == before
    # The task's own token takes it.
    proc = start(rig, box, ["true"], metadata=rig.worker())
    assert proc.pid in before


def test_spares_do_not_make_a_sandbox_busy(make_manager: Callable[..., SandboxManager]) -> None:
    manager = make_manager()
    box = manager.acquire("t-idle", "coder", Spec()).sandbox.sandbox_id
    wait_for(lambda: manager.processes.spares.count(box) == 1, "a spare is ready")
    assert not manager.is_busy(box)
    assert manager.processes.in_sandbox(box, include_exited=True) == []
    process = manager.processes.start(box, ProcessConfig(argv=("sleep", "300")))
    assert manager.is_busy(box)
    assert manager.metrics.snapshot().get("process_start.spare") == 1
    process.signal(9, by="the test")
    wait_for(lambda: not process.running, "the process ended")
    wait_for(lambda: manager.processes.spares.count(box) == 1, "a spare is made again")
    assert not manager.is_busy(box)
    manager.stop(box)
    assert manager.processes.spares.count(box) == 0


def test_a_takes_refill_waits_and_a_drop_meanwhile_cancels_it(
    make_manager: Callable[..., SandboxManager], engine: docker.DockerClient
) -> None:
    # The refill after a take waits REFILL_DELAY_SECONDS, so it does not
    # compete with the process the take started; a drop meanwhile (the
    # sandbox stops) cancels it, and a fill asked for after that (it runs
    # again) is served by the pending one.
    manager = make_manager()
    spares = manager.processes.spares
    box = manager.acquire("t-refill", "coder", Spec()).sandbox.sandbox_id
    wait_for(lambda: spares.count(box) == 1, "a spare is ready")
    taken = spares.take(box)
    assert taken is not None
    taken.drop()
    spares.drop(box)
    threading.Event().wait(REFILL_DELAY_SECONDS + 0.5)
    assert spares.count(box) == 0
    wait_for(lambda: not engine_spares(engine, box), "no spare runs in the sandbox")
    assert spares.take(box) is None
    spares.fill_soon(box)
    wait_for(lambda: spares.count(box) == 1, "the sandbox's spare is made again")
    again = spares.take(box)
    assert again is not None
    spares.drop(box)  # the take's pending refill is cancelled ...
    spares.fill_soon(box)  # ... and asked for again: the pending one serves it
    wait_for(lambda: spares.count(box) == 1, "the pending refill made a spare")
    again.drop()


def engine_spares(engine: docker.DockerClient, box: str) -> set[int]:
    out = engine.api.exec_start(engine.api.exec_create(box, ["sh", "-c", SPARES_SCRIPT])["Id"])
    return {int(line) for line in out.split()}


@pytest.fixture
def managers(
    sandbox_image: str, test_deployment: str, tmp_path: Path, engine: docker.DockerClient
) -> Iterator[tuple[list[Manager], dict[str, str]]]:
    """Manager processes of their own deployment (as test_sandbox_processes starts them)."""
    env = {
        "LONGSHORE_DEPLOYMENT": test_deployment,
        "LONGSHORE_INTERNAL_TOKEN": secrets.token_hex(16),
        "LONGSHORE_HOME": str(tmp_path),
        "LONGSHORE_SANDBOX_DEFAULT_IMAGE": sandbox_image,
        "LONGSHORE_SANDBOX_STOP_TIMEOUT_SECONDS": "2",
    }
    made: list[Manager] = []
    try:
        yield made, env
    finally:
        for m in made:
            m.close()
        remove_deployment(engine, test_deployment)


def test_a_manager_killed_leaves_no_spare_behind(
    managers: tuple[list[Manager], dict[str, str]], engine: docker.DockerClient
) -> None:
    made, env = managers
    first = spawn(made, env, "sandbox-spares-k1")
    box = acquire(first.stub, "spare-leftover").sandbox.sandbox_id
    wait_for(lambda: bool(engine_spares(engine, box)), "a spare is ready")
    old = engine_spares(engine, box)
    first.proc.kill()
    first.proc.wait(timeout=10)
    # Its exec sockets closed with it: each spare's read ends, the shell exits
    # (and the next manager's leftover sweep would end what still ran: the marker).
    wait_for(lambda: not engine_spares(engine, box) & old, "the dead manager's spares ended")
    second = spawn(made, env, "sandbox-spares-k2")
    assert acquire(second.stub, "spare-leftover").sandbox.sandbox_id == box
    wait_for(lambda: bool(engine_spares(engine, box) - old), "the new manager made its own")


def test_a_warm_member_has_its_spare_before_a_task_takes_it(rig: Rig) -> None:
    def set_pool(size: int) -> None:
        rig.stubs.sandbox.SetWarmPool(
            pool_pb2.SetWarmPoolRequest(profile="warm", spec=sandbox_pb2.SandboxSpec(), size=size),
            timeout=T,
            metadata=rig.admin,
        )

    def members() -> list[str]:
        rows = rig.stubs.sandbox.ListSandboxes(
            pb.ListSandboxesRequest(profile="warm", page_size=10), timeout=T, metadata=rig.admin
        ).sandboxes
        return [r.sandbox_id for r in rows if r.warm_pool == "warm"]

    def ready() -> int:
        pools = rig.stubs.sandbox.ListWarmPools(
            pool_pb2.ListWarmPoolsRequest(profile="warm"), timeout=T, metadata=rig.admin
        ).pools
        return pools[0].ready if pools else 0

    set_pool(1)
    try:
        wait_for(lambda: ready() == 1, "a warm member is ready", bound=120)
        (member,) = members()
        before = ready_spares(rig, member)  # made when the member was ready: no acquire yet
        got = rig.stubs.sandbox.AcquireSandbox(
            pb.AcquireSandboxRequest(task_id="t-warm", profile="warm"),
            timeout=T,
            metadata=rig.admin,
        )
        assert got.outcome == sandbox_pb2.REUSE_OUTCOME_TAKEN_FROM_POOL, got.reason
        assert got.sandbox.sandbox_id == member
        proc = start(rig, member, ["true"])
        assert proc.pid in before
    finally:
        set_pool(0)
