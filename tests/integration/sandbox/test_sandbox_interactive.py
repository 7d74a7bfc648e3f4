"""Background and interactive processes through the real gateway and manager, on the real engine.

Every call goes client → gateway (API key, scope) → sandbox manager (access,
docker exec with an attached socket). Covers a tagged background process
listed and reconnected to by id, pid and tag from offset 0 and from the
middle, input and close-stdin, signals to the whole group (a trap, a child
sleep that dies too, SIGKILL), a timeout, a PTY (``tty``, ``stty size``
before and after a resize), output that overflowed the ring
(``skipped_to_offset``), a duplicate tag, the cap, bad input with precise
codes, a sandbox that stops under its process, and both refusals: a key
without the scope (at the gateway) and another task's sandbox token (at the
manager).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import docker
import grpc
import pytest
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import process_pb2, sandbox_pb2, sandbox_service_pb2

from services.runtime.sandbox_tokens import SANDBOX_TOKEN_KEY, SandboxGrant, SandboxTokens
from services.runtime.sandbox_tokens import spec_digest as digest_of
from services.sandbox.manager import SandboxManager
from services.sandbox.model import Spec
from services.sandbox.processes import ProcessConfig
from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.integration.sandbox.conftest import remove_deployment

T = 60
pb = sandbox_service_pb2
Metadata = Sequence[tuple[str, str]]
#: The ring is small here, so a test can overflow it with 20 KB.
BUFFER_BYTES = 4096
MAX_PROCESSES = 6


@dataclass
class Rig:
    stack: RealStack
    stubs: Stubs
    deployment: str
    box: str  # driven with the admin key
    worker_box: str  # task "t-work", the worker's

    @property
    def admin(self) -> Metadata:
        return auth(self.stack.keys.admin)

    def worker(self, task: str = "t-work") -> Metadata:
        grant = SandboxGrant(
            deployment=self.deployment,
            task_id=task,
            profile="coder",
            run_id=f"r-{task}",
            spec_digest=digest_of(sandbox_pb2.SandboxSpec()),
            expires=time.time() + 600,
            holder="bot",
        )
        token = SandboxTokens(self.stack.token).mint(grant)
        return (*auth(self.stack.keys.worker), (SANDBOX_TOKEN_KEY, token))

    def acquire(self, task: str) -> str:
        return self.stubs.sandbox.AcquireSandbox(
            pb.AcquireSandboxRequest(task_id=task, profile="coder"), timeout=T, metadata=self.admin
        ).sandbox.sandbox_id


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str) -> Iterator[Rig]:
    deployment = f"t{run_id}-procs"
    home = tmp_path_factory.mktemp("procs-stack")
    client = docker.from_env()
    env = {
        "LONGSHORE_SANDBOX_PROCESS_OUTPUT_BUFFER_BYTES": str(BUFFER_BYTES),
        "LONGSHORE_SANDBOX_MAX_PROCESSES_PER_SANDBOX": str(MAX_PROCESSES),
    }
    try:
        with (
            real_stack(home, deployment=deployment, image=sandbox_image, sandbox_env=env) as stack,
            stack.channel() as channel,
        ):
            rig = Rig(stack, Stubs(channel), deployment, "", "")
            rig.box = rig.acquire("t-procs")
            rig.worker_box = rig.acquire("t-work")
            yield rig
    finally:
        remove_deployment(client, deployment)
        client.close()


def start(rig: Rig, box: str, argv: list[str], **fields: object) -> process_pb2.Process:
    metadata = fields.pop("metadata", None) or rig.admin
    config = process_pb2.ProcessConfig(argv=argv, **fields)  # type: ignore[arg-type]
    return rig.stubs.sandbox.StartProcess(
        process_pb2.StartProcessRequest(sandbox_id=box, config=config),
        timeout=T,
        metadata=metadata,  # type: ignore[arg-type]
    ).process


def by_id(process: process_pb2.Process) -> process_pb2.ProcessSelector:
    return process_pb2.ProcessSelector(process_id=process.process_id)


@dataclass
class Seen:
    started: process_pb2.Process
    output: bytes
    offsets: list[int]
    skipped_to: list[int]
    streams: set[int]
    exit: process_pb2.ProcessExit | None


def connect(
    rig: Rig,
    box: str,
    selector: process_pb2.ProcessSelector,
    from_offset: int = 0,
    until: bytes | tuple[bytes, ...] | None = None,
    metadata: Metadata | None = None,
) -> Seen:
    """Follows a process's stream to its exit (or until every ``until`` is in the output)."""
    needles = (until,) if isinstance(until, bytes) else until
    call = rig.stubs.sandbox.ConnectProcess(
        process_pb2.ConnectProcessRequest(
            sandbox_id=box, process=selector, from_offset=from_offset
        ),
        timeout=T,
        metadata=metadata or rig.admin,
    )
    seen = Seen(process_pb2.Process(), b"", [], [], set(), None)
    for message in call:
        event = message.event
        kind = event.WhichOneof("event")
        if kind == "started":
            seen.started = event.started
        elif kind == "output":
            seen.offsets.append(event.output.offset)
            seen.output += event.output.chunk.data
            seen.streams.add(event.output.chunk.stream)
            if needles is not None and all(n in seen.output for n in needles):
                call.cancel()
                return seen
        elif kind == "skipped_to_offset":
            seen.skipped_to.append(event.skipped_to_offset)
        else:
            seen.exit = event.exit
    return seen


def send(
    rig: Rig, box: str, process: process_pb2.Process, data: bytes, close: bool = False
) -> None:
    rig.stubs.sandbox.SendProcessInput(
        process_pb2.SendProcessInputRequest(
            sandbox_id=box, process=by_id(process), data=data, close_stdin=close
        ),
        timeout=T,
        metadata=rig.admin,
    )


def signal(rig: Rig, box: str, process: process_pb2.Process, number: int) -> None:
    rig.stubs.sandbox.SignalProcess(
        process_pb2.SignalProcessRequest(sandbox_id=box, process=by_id(process), signal=number),
        timeout=T,
        metadata=rig.admin,
    )


def failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def exec_out(rig: Rig, box: str, script: str) -> bytes:
    out = b""
    for message in rig.stubs.sandbox.Exec(
        pb.ExecRequest(sandbox_id=box, argv=["sh", "-c", script]), timeout=T, metadata=rig.admin
    ):
        if message.HasField("output"):
            out += message.output.data
    return out


def wait_for(condition: Callable[[], bool], what: str, bound: float = 30.0) -> None:
    """Polls a condition the engine settles asynchronously, with a generous bound."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def test_a_tagged_background_process_is_listed_fed_and_replayed(rig: Rig) -> None:
    script = "echo hello; echo oops >&2; read line; echo got $line"
    proc = start(rig, rig.box, ["sh", "-c", script], tag="job-1", stdin=True)
    assert proc.process_id.startswith("proc-") and len(proc.process_id) == 21
    assert proc.pid > 1 and proc.tag == "job-1" and proc.stdin_open
    assert proc.state == process_pb2.PROCESS_STATE_RUNNING
    listed = rig.stubs.sandbox.ListProcesses(
        process_pb2.ListProcessesRequest(sandbox_id=rig.box), timeout=T, metadata=rig.admin
    ).processes
    assert proc.process_id in [p.process_id for p in listed]
    # Connect by tag: the output so far, live; then input reaches it.
    first = connect(
        rig, rig.box, process_pb2.ProcessSelector(tag="job-1"), until=(b"hello\n", b"oops\n")
    )
    assert first.started.process_id == proc.process_id
    assert b"hello\n" in first.output
    send(rig, rig.box, proc, b"abc\n")
    rest = connect(rig, rig.box, process_pb2.ProcessSelector(pid=proc.pid))
    assert rest.exit is not None and rest.exit.exit_code == 0 and rest.exit.signal == 0
    assert rest.output.endswith(b"got abc\n")
    assert sorted(rest.output.split(b"\n")) == sorted(b"hello\noops\ngot abc\n".split(b"\n"))
    streams = {sandbox_pb2.OUTPUT_STREAM_STDOUT, sandbox_pb2.OUTPUT_STREAM_STDERR}
    assert rest.streams == streams
    assert rest.offsets[0] == 0
    # Exited, it is still there: replay from the middle.
    total = len(rest.output)
    middle = connect(rig, rig.box, by_id(proc), from_offset=3)
    assert middle.output == rest.output[3:] and middle.offsets[0] == 3
    assert middle.started.state == process_pb2.PROCESS_STATE_EXITED
    assert middle.started.output_bytes == total and not middle.started.stdin_open
    running = rig.stubs.sandbox.ListProcesses(
        process_pb2.ListProcessesRequest(sandbox_id=rig.box), timeout=T, metadata=rig.admin
    ).processes
    assert proc.process_id not in [p.process_id for p in running]
    everything = rig.stubs.sandbox.ListProcesses(
        process_pb2.ListProcessesRequest(sandbox_id=rig.box, include_exited=True),
        timeout=T,
        metadata=rig.admin,
    ).processes
    mine = [p for p in everything if p.process_id == proc.process_id]
    assert mine and mine[0].state == process_pb2.PROCESS_STATE_EXITED
    assert mine[0].exit.exit_code == 0


def _start_and_follow(
    rig: Rig, box: str, config: process_pb2.ProcessConfig, metadata: Metadata | None = None
) -> Any:
    """ConnectProcess with ``start``: the call (iterate it; cancel() leaves)."""
    return rig.stubs.sandbox.ConnectProcess(
        process_pb2.ConnectProcessRequest(sandbox_id=box, start=config),
        timeout=T,
        metadata=metadata or rig.admin,
    )


def test_connect_with_start_runs_and_follows_in_one_call(rig: Rig) -> None:
    call = _start_and_follow(
        rig, rig.box, process_pb2.ProcessConfig(argv=["sh", "-c", "echo one; echo two >&2; exit 3"])
    )
    events = [reply.event for reply in call]
    assert events[0].HasField("started") and events[0].started.pid > 1
    outputs = [e.output for e in events if e.HasField("output")]
    assert outputs and outputs[0].offset == 0  # followed from its first byte
    out = b"".join(o.chunk.data for o in outputs)
    assert sorted(out.split(b"\n")) == sorted(b"one\ntwo\n".split(b"\n"))
    assert events[-1].HasField("exit") and events[-1].exit.exit_code == 3
    # A caller that leaves does not end it (as after StartProcess): attach again by tag.
    call = _start_and_follow(
        rig,
        rig.box,
        process_pb2.ProcessConfig(argv=["sh", "-c", "echo ready; sleep 1; echo later"], tag="sf-1"),
    )
    for reply in call:
        if reply.event.HasField("output") and b"ready" in reply.event.output.chunk.data:
            call.cancel()
            break
    rest = connect(rig, rig.box, process_pb2.ProcessSelector(tag="sf-1"))
    assert rest.exit is not None and rest.exit.exit_code == 0
    assert rest.output == b"ready\nlater\n"


def test_connect_with_start_refuses_a_selector_an_offset_and_both_callers(rig: Rig) -> None:
    config = process_pb2.ProcessConfig(argv=["true"])
    for request, words in (
        (
            process_pb2.ConnectProcessRequest(
                sandbox_id=rig.box, start=config, process=process_pb2.ProcessSelector(tag="x")
            ),
            "must be unset when start is set",
        ),
        (
            process_pb2.ConnectProcessRequest(sandbox_id=rig.box, start=config, from_offset=2),
            "must be unset when start is set",
        ),
        (
            process_pb2.ConnectProcessRequest(
                sandbox_id=rig.box, start=process_pb2.ProcessConfig()
            ),
            "start.argv: required",
        ),
    ):
        code, details = failure(
            lambda request=request: list(
                rig.stubs.sandbox.ConnectProcess(request, timeout=T, metadata=rig.admin)
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, (code, details)
    # The scope (a reader key, at the gateway) and the sandbox (another task's token).
    code, details = failure(
        lambda: list(_start_and_follow(rig, rig.box, config, auth(rig.stack.keys.reader)))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "scope" in details
    code, details = failure(lambda: list(_start_and_follow(rig, rig.box, config, rig.worker())))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "belongs to task" in details
    own = list(_start_and_follow(rig, rig.worker_box, config, rig.worker()))
    assert own[-1].event.exit.exit_code == 0


def test_a_connect_past_the_output_so_far_waits_for_it(rig: Rig) -> None:
    proc = start(rig, rig.box, ["sh", "-c", "read x; echo abcdef"], stdin=True)
    call = rig.stubs.sandbox.ConnectProcess(
        process_pb2.ConnectProcessRequest(sandbox_id=rig.box, process=by_id(proc), from_offset=3),
        timeout=T,
        metadata=rig.admin,
    )
    first = next(call).event
    assert first.started.output_bytes == 0  # the stream is open before any output exists
    send(rig, rig.box, proc, b"go\n")
    rest = [reply.event for reply in call]
    assert [(e.output.offset, e.output.chunk.data) for e in rest if e.HasField("output")] == [
        (3, b"def\n")
    ]
    assert rest[-1].HasField("exit")


def test_close_stdin_ends_cat_and_input_after_it_is_refused(rig: Rig) -> None:
    proc = start(rig, rig.box, ["cat"], stdin=True)
    send(rig, rig.box, proc, b"one ")
    send(rig, rig.box, proc, b"two", close=True)
    seen = connect(rig, rig.box, by_id(proc))
    assert seen.output == b"one two"
    assert seen.exit is not None and seen.exit.exit_code == 0
    code, details = failure(lambda: send(rig, rig.box, proc, b"late"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and proc.process_id in details
    # Without stdin=True there is no input at all.
    quiet = start(rig, rig.box, ["sleep", "300"])
    code, details = failure(lambda: send(rig, rig.box, quiet, b"x"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "stdin is closed" in details
    signal(rig, rig.box, quiet, 9)


def test_a_trapped_sigterm_runs_the_trap(rig: Rig) -> None:
    script = "trap 'echo bye; exit 3' TERM; echo ready; while :; do sleep 1; done"
    proc = start(rig, rig.box, ["sh", "-c", script])
    connect(rig, rig.box, by_id(proc), until=b"ready\n")
    signal(rig, rig.box, proc, 15)
    seen = connect(rig, rig.box, by_id(proc))
    # (The shell may also report its sleep "Terminated": the group got the signal.)
    assert seen.output.replace(b"Terminated\n", b"") == b"ready\nbye\n"
    assert seen.exit is not None and (seen.exit.exit_code, seen.exit.signal) == (3, 0)


def test_a_signal_reaches_the_whole_group(rig: Rig) -> None:
    proc = start(rig, rig.box, ["sh", "-c", "sleep 300 & echo $!; wait"])
    child = int(connect(rig, rig.box, by_id(proc), until=b"\n").output.strip())
    assert b"alive" in exec_out(rig, rig.box, f"kill -0 {child} && echo alive")
    signal(rig, rig.box, proc, 15)
    seen = connect(rig, rig.box, by_id(proc))
    assert seen.exit is not None and (seen.exit.exit_code, seen.exit.signal) == (-1, 15)
    assert "SignalProcess" in seen.exit.reason
    # The child sleep got the signal too (init reaps it a moment later).
    wait_for(
        lambda: b"gone" in exec_out(rig, rig.box, f"[ -e /proc/{child} ] || echo gone"),
        f"child {child} ended",
    )


def test_sigkill_ends_the_tree_and_a_timeout_is_reported(rig: Rig) -> None:
    proc = start(rig, rig.box, ["sh", "-c", "sleep 300 & wait"])
    signal(rig, rig.box, proc, 9)
    seen = connect(rig, rig.box, by_id(proc))
    assert seen.exit is not None and seen.exit.signal == 9 and not seen.exit.timed_out
    assert seen.exit.reason == "killed by SignalProcess"
    slow = start(
        rig, rig.box, ["sh", "-c", "sleep 300 & wait"], timeout=duration_pb2.Duration(seconds=1)
    )
    seen = connect(rig, rig.box, by_id(slow))
    assert seen.exit is not None and seen.exit.timed_out and seen.exit.signal == 9
    assert seen.exit.exit_code == -1 and "timed out" in seen.exit.reason
    code, _ = failure(lambda: signal(rig, rig.box, slow, 15))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_pty_is_a_terminal_of_the_asked_size_and_resizes(rig: Rig) -> None:
    proc = start(rig, rig.box, ["sh"], stdin=True, pty=process_pb2.PtySize(rows=24, columns=80))
    assert proc.pty.rows == 24 and proc.pty.columns == 80
    # The terminal echoes the input: wait for what only the shell's echo prints.
    send(rig, rig.box, proc, b"tty; stty size; echo mark-$((1+1))\n")
    seen = connect(rig, rig.box, by_id(proc), until=b"mark-2\r\n")
    assert b"/dev/pts/" in seen.output and b"24 80\r\n" in seen.output
    assert seen.streams == {sandbox_pb2.OUTPUT_STREAM_PTY}
    rig.stubs.sandbox.ResizeProcess(
        process_pb2.ResizeProcessRequest(
            sandbox_id=rig.box, process=by_id(proc), size=process_pb2.PtySize(rows=30, columns=100)
        ),
        timeout=T,
        metadata=rig.admin,
    )
    send(rig, rig.box, proc, b"stty size; exit 4\n")
    seen = connect(rig, rig.box, by_id(proc))
    assert b"30 100\r\n" in seen.output
    assert seen.exit is not None and seen.exit.exit_code == 4


def test_output_beyond_the_ring_is_reported_skipped(rig: Rig) -> None:
    proc = start(rig, rig.box, ["sh", "-c", "yes | head -c 20000; echo; echo done"])
    seen = connect(rig, rig.box, by_id(proc))
    total = 20000 + len(b"\ndone\n")
    assert seen.exit is not None and seen.exit.exit_code == 0
    # A live reader may or may not have fallen behind; a replay after the exit has.
    seen = connect(rig, rig.box, by_id(proc))
    assert seen.skipped_to == [total - BUFFER_BYTES]
    assert seen.offsets[0] == total - BUFFER_BYTES
    assert seen.output.endswith(b"y\n\ndone\n") and len(seen.output) == BUFFER_BYTES
    # A reconnect inside the ring gets exactly the rest.
    tail = connect(rig, rig.box, by_id(proc), from_offset=total - 5)
    assert tail.output == b"done\n" and not tail.skipped_to


def test_a_duplicate_tag_and_the_cap_are_refused(rig: Rig) -> None:
    box = rig.acquire("t-cap")
    first = start(rig, box, ["sleep", "300"], tag="only")
    code, details = failure(lambda: start(rig, box, ["sleep", "300"], tag="only"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "'only'" in details
    others = [start(rig, box, ["sleep", "300"]) for _ in range(MAX_PROCESSES - 1)]
    code, details = failure(lambda: start(rig, box, ["sleep", "300"]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "sandbox.max_processes_per_sandbox" in details
    for proc in [first, *others]:
        signal(rig, box, proc, 9)
    # Once it exited, its tag is free again.
    again = start(rig, box, ["true"], tag="only")
    assert connect(rig, box, by_id(again)).exit is not None


def test_bad_input_gets_precise_codes(rig: Rig) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases: list[tuple[Callable[[], object], grpc.StatusCode, str]] = [
        (lambda: start(rig, rig.box, []), invalid, "config.argv: required"),
        (lambda: start(rig, rig.box, ["a\0b"]), invalid, "config.argv"),
        (lambda: start(rig, rig.box, ["true"], tag="-bad"), invalid, "config.tag"),
        (lambda: start(rig, rig.box, ["true"], tag="x" * 64), invalid, "config.tag"),
        (lambda: start(rig, rig.box, ["true"], env={"1A": "v"}), invalid, "config.env"),
        (
            lambda: start(rig, rig.box, ["true"], env={"LONGSHORE_EXEC_ID": "v"}),
            invalid,
            "config.env",
        ),
        (
            lambda: start(rig, rig.box, ["sh"], pty=process_pb2.PtySize(rows=0, columns=80)),
            invalid,
            "config.pty.rows",
        ),
        (
            lambda: start(rig, rig.box, ["true"], timeout=duration_pb2.Duration(seconds=8 * 86400)),
            grpc.StatusCode.OUT_OF_RANGE,
            "config.timeout",
        ),
        (lambda: start(rig, "", ["true"]), invalid, "sandbox_id"),
        (lambda: start(rig, "nope" * 40, ["true"]), invalid, "sandbox_id"),
        (lambda: start(rig, "no-such-box", ["true"]), grpc.StatusCode.NOT_FOUND, "no-such-box"),
    ]
    for call, code, needle in cases:
        got, details = failure(call)
        assert (got, needle in details) == (code, True), (needle, got, details)
    proc = start(rig, rig.box, ["sleep", "300"])
    done = start(rig, rig.box, ["echo", "hi"])
    assert connect(rig, rig.box, by_id(done)).output == b"hi\n"
    unknown = process_pb2.ProcessSelector(process_id="proc-0000000000000000")
    more: list[tuple[Callable[[], object], grpc.StatusCode, str]] = [
        (lambda: connect(rig, rig.box, unknown), grpc.StatusCode.NOT_FOUND, "proc-0000"),
        (
            lambda: connect(rig, rig.box, process_pb2.ProcessSelector(tag="never")),
            grpc.StatusCode.NOT_FOUND,
            "'never'",
        ),
        (lambda: connect(rig, rig.box, process_pb2.ProcessSelector()), invalid, "process"),
        (lambda: connect(rig, rig.box, by_id(proc), from_offset=-1), invalid, "from_offset"),
        (
            lambda: connect(rig, rig.box, by_id(done), from_offset=10),
            grpc.StatusCode.OUT_OF_RANGE,
            "from_offset",
        ),
        (lambda: signal(rig, rig.box, proc, 0), invalid, "signal"),
        (lambda: signal(rig, rig.box, proc, 65), invalid, "signal"),
        (
            lambda: rig.stubs.sandbox.ResizeProcess(
                process_pb2.ResizeProcessRequest(
                    sandbox_id=rig.box,
                    process=by_id(proc),
                    size=process_pb2.PtySize(rows=10, columns=1001),
                ),
                timeout=T,
                metadata=rig.admin,
            ),
            invalid,
            "size.columns",
        ),
        (
            lambda: rig.stubs.sandbox.ResizeProcess(
                process_pb2.ResizeProcessRequest(
                    sandbox_id=rig.box,
                    process=by_id(proc),
                    size=process_pb2.PtySize(rows=10, columns=10),
                ),
                timeout=T,
                metadata=rig.admin,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "no PTY",
        ),
        (
            lambda: rig.stubs.sandbox.SendProcessInput(
                process_pb2.SendProcessInputRequest(
                    sandbox_id=rig.box, process=by_id(proc), data=b"x" * (1024 * 1024 + 1)
                ),
                timeout=T,
                metadata=rig.admin,
            ),
            invalid,
            "data",
        ),
    ]
    for call, code, needle in more:
        got, details = failure(call)
        assert (got, needle in details) == (code, True), (needle, got, details)
    signal(rig, rig.box, proc, 9)


def test_a_sandbox_that_stops_ends_its_processes(rig: Rig) -> None:
    box = rig.acquire("t-stop")
    proc = start(rig, box, ["sleep", "300"])
    client = docker.from_env()
    try:
        client.api.stop(box, timeout=1)
    finally:
        client.close()
    seen = connect(rig, box, by_id(proc))
    assert seen.exit is not None and seen.exit.exit_code == -1
    assert seen.exit.reason == "the sandbox stopped"
    code, details = failure(lambda: start(rig, box, ["true"]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not running" in details


def test_the_scope_and_the_sandbox_token_are_both_enforced(rig: Rig) -> None:
    reader = auth(rig.stack.keys.reader)
    code, details = failure(lambda: start(rig, rig.box, ["true"], metadata=reader))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "scope" in details
    code, _ = failure(
        lambda: rig.stubs.sandbox.ListProcesses(
            process_pb2.ListProcessesRequest(sandbox_id=rig.box), timeout=T, metadata=reader
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # The worker's own sandbox works with its token; the admin's box does not.
    own = start(rig, rig.worker_box, ["echo", "mine"], metadata=rig.worker())
    seen = connect(rig, rig.worker_box, by_id(own), metadata=rig.worker())
    assert seen.output == b"mine\n"
    code, details = failure(lambda: start(rig, rig.box, ["true"], metadata=rig.worker()))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "belongs to task" in details
    other = start(rig, rig.box, ["sleep", "300"])
    code, _ = failure(lambda: connect(rig, rig.box, by_id(other), metadata=rig.worker()))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = failure(
        lambda: rig.stubs.sandbox.SignalProcess(
            process_pb2.SignalProcessRequest(sandbox_id=rig.box, process=by_id(other), signal=9),
            timeout=T,
            metadata=rig.worker(),
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    listed = rig.stubs.sandbox.ListProcesses(
        process_pb2.ListProcessesRequest(sandbox_id=rig.box), timeout=T, metadata=rig.admin
    ).processes
    assert other.process_id in [p.process_id for p in listed]  # refused calls changed nothing
    # Only an operator may choose the user.
    code, details = failure(
        lambda: start(rig, rig.worker_box, ["true"], user="0", metadata=rig.worker())
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "user" in details
    signal(rig, rig.box, other, 9)


class Interactive:
    """One RunProcess call driven message by message from the test's thread."""

    def __init__(
        self,
        rig: Rig,
        box: str,
        config: process_pb2.ProcessConfig,
        metadata: Metadata | None = None,
    ) -> None:
        self._out: queue.Queue[process_pb2.RunProcessRequest | None] = queue.Queue()
        self._out.put(
            process_pb2.RunProcessRequest(
                start=process_pb2.RunProcessStart(sandbox_id=box, config=config)
            )
        )
        self.call = rig.stubs.sandbox.RunProcess(
            iter(self._out.get, None), timeout=T, metadata=metadata or rig.admin
        )
        self.output = b""
        self.exit: process_pb2.ProcessExit | None = None
        self.started = process_pb2.Process()

    def send(self, **message: object) -> None:
        self._out.put(process_pb2.RunProcessRequest(**message))  # type: ignore[arg-type]

    def half_close(self) -> None:
        self._out.put(None)

    def read_until(self, needle: bytes | None = None) -> bytes:
        """Reads events until ``needle`` is in the output (None: until the exit)."""
        for reply in self.call:
            event = reply.event
            kind = event.WhichOneof("event")
            if kind == "started":
                self.started = event.started
            elif kind == "output":
                self.output += event.output.chunk.data
            elif kind == "exit":
                self.exit = event.exit
            if needle is not None and needle in self.output:
                return self.output
        return self.output


def test_run_process_carries_stdin_and_close_stdin(rig: Rig) -> None:
    run = Interactive(rig, rig.box, process_pb2.ProcessConfig(argv=["cat"], stdin=True))
    run.send(stdin=b"hello\n")
    assert run.read_until(b"hello\n") == b"hello\n"
    assert run.started.pid > 1 and run.started.state == process_pb2.PROCESS_STATE_RUNNING
    run.send(stdin=b"again")
    run.send(close_stdin=process_pb2.CloseStdin())
    run.half_close()
    assert run.read_until() == b"hello\nagain"
    assert run.exit is not None and run.exit.exit_code == 0


def test_run_process_signals_and_resizes_a_pty(rig: Rig) -> None:
    config = process_pb2.ProcessConfig(
        argv=["sh"], stdin=True, pty=process_pb2.PtySize(rows=10, columns=40)
    )
    run = Interactive(rig, rig.box, config)
    run.send(resize=process_pb2.PtySize(rows=50, columns=120))
    run.send(stdin=b"stty size; echo at-$((2+2))\n")
    assert b"50 120\r\n" in run.read_until(b"at-4\r\n")
    run.send(signal=9)
    run.read_until()
    assert (
        run.exit is not None and run.exit.signal == 9 and run.exit.reason == "killed by RunProcess"
    )


def test_a_run_process_caller_that_goes_away_kills_the_process(rig: Rig) -> None:
    config = process_pb2.ProcessConfig(argv=["sleep", "300"], tag="abandoned")
    run = Interactive(rig, rig.box, config)
    assert next(run.call).event.HasField("started")
    run.call.cancel()
    run.half_close()

    def ended() -> bool:
        listed = rig.stubs.sandbox.ListProcesses(
            process_pb2.ListProcessesRequest(sandbox_id=rig.box, include_exited=True),
            timeout=T,
            metadata=rig.admin,
        ).processes
        mine = [p for p in listed if p.tag == "abandoned"]
        return bool(mine) and mine[0].state == process_pb2.PROCESS_STATE_EXITED

    wait_for(ended, "the abandoned process ended")
    seen = connect(rig, rig.box, process_pb2.ProcessSelector(tag="abandoned"))
    assert seen.exit is not None and "went away" in seen.exit.reason


def test_run_process_refuses_a_bad_first_message_and_both_refusals(rig: Rig) -> None:
    def first_only(message: process_pb2.RunProcessRequest, metadata: Metadata) -> None:
        list(rig.stubs.sandbox.RunProcess(iter([message]), timeout=T, metadata=metadata))

    code, details = failure(
        lambda: first_only(process_pb2.RunProcessRequest(stdin=b"x"), rig.admin)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "first message" in details
    start = process_pb2.RunProcessRequest(
        start=process_pb2.RunProcessStart(
            sandbox_id=rig.box, config=process_pb2.ProcessConfig(argv=[])
        )
    )
    code, details = failure(lambda: first_only(start, rig.admin))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "start.config.argv" in details
    start.start.config.argv.append("true")
    code, details = failure(lambda: first_only(start, auth(rig.stack.keys.reader)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "scope" in details
    code, details = failure(lambda: first_only(start, rig.worker()))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "belongs to task" in details
    # A bad message later ends the stream with its own code.
    run = Interactive(rig, rig.box, process_pb2.ProcessConfig(argv=["sleep", "300"]))
    run.send(signal=99)
    code, details = failure(run.read_until)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "signal" in details


def test_a_running_process_keeps_its_sandbox_busy(
    make_manager: Callable[..., SandboxManager],
) -> None:
    # The reaper's idle pause and the leftover sweep ask is_busy: a sandbox
    # whose only activity is a background process must count as busy.
    manager = make_manager()
    box = manager.acquire("t-busy", "coder", Spec()).sandbox.sandbox_id
    assert not manager.is_busy(box)
    process = manager.processes.start(box, ProcessConfig(argv=("sleep", "300")))
    assert manager.is_busy(box)
    process.signal(9, by="the test")
    wait_for(lambda: not process.running, "the process ended")
    assert not manager.is_busy(box)
