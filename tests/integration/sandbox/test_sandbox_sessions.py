"""Shell sessions through the real gateway and manager processes, on the real engine.

Every call goes client → gateway (API key, scope) → sandbox manager (access,
the session's shell in a ``docker exec -i``). Covers state that persists
(directory, exported variable, function), output streamed before a command
ends, stdout and stderr apart, exit codes, the output cap, a timeout and a
cancel that kill the command's whole tree and leave the session READY, a
shell that dies (DEAD, then a new session), close, list, idle expiry, the
cap on sessions, a busy session, bad input, a stopped sandbox, and both
refusals (scope at the gateway, another run's token at the manager).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import docker
import grpc
import pytest
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2, session_pb2

from services.runtime.sandbox_tokens import SANDBOX_TOKEN_KEY, SandboxGrant, SandboxTokens
from services.runtime.sandbox_tokens import spec_digest as digest_of
from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.integration.sandbox.conftest import remove_deployment
from tests.support.processes import ServiceProcess

T = 60
pb = sandbox_service_pb2
sp = session_pb2
Metadata = Sequence[tuple[str, str]]
WORKER_SPEC = sandbox_pb2.SandboxSpec(user="65534")
#: The stack's cap on open sessions per sandbox.
CAP = 4


@dataclass
class Rig:
    stack: RealStack
    stubs: Stubs
    deployment: str
    box: str  # a root sandbox, driven with the admin key
    worker_box: str  # task "t-work": the worker's, running as 65534

    @property
    def admin(self) -> Metadata:
        return auth(self.stack.keys.admin)

    def worker(self, task: str = "t-work") -> Metadata:
        grant = SandboxGrant(
            deployment=self.deployment,
            task_id=task,
            profile="coder",
            run_id=f"r-{task}",
            spec_digest=digest_of(WORKER_SPEC),
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
    deployment = f"t{run_id}-sessions"
    home = tmp_path_factory.mktemp("sessions-stack")
    client = docker.from_env()
    try:
        with (
            real_stack(
                home,
                deployment=deployment,
                image=sandbox_image,
                sandbox_env={"LONGSHORE_SANDBOX_MAX_SESSIONS_PER_SANDBOX": str(CAP)},
            ) as stack,
            stack.channel() as channel,
        ):
            stubs = Stubs(channel)
            admin = auth(stack.keys.admin)
            box = stubs.sandbox.AcquireSandbox(
                pb.AcquireSandboxRequest(task_id="t-sessions", profile="coder"),
                timeout=T,
                metadata=admin,
            ).sandbox.sandbox_id
            worker_box = stubs.sandbox.AcquireSandbox(
                pb.AcquireSandboxRequest(task_id="t-work", profile="coder", spec=WORKER_SPEC),
                timeout=T,
                metadata=admin,
            ).sandbox.sandbox_id
            yield Rig(stack, stubs, deployment, box, worker_box)
    finally:
        remove_deployment(client, deployment)
        client.close()


@dataclass
class Result:
    stdout: bytes = b""
    stderr: bytes = b""
    exit: sp.SessionCommandExit = field(default_factory=sp.SessionCommandExit)


def open_session(
    rig: Rig, box: str | None = None, metadata: Metadata | None = None, **fields: object
) -> sp.Session:
    return rig.stubs.sandbox.OpenSession(
        sp.OpenSessionRequest(sandbox_id=rig.box if box is None else box, **fields),  # type: ignore[arg-type]
        timeout=T,
        metadata=rig.admin if metadata is None else metadata,
    ).session


def run(
    rig: Rig,
    session: sp.Session,
    command: str,
    metadata: Metadata | None = None,
    **fields: object,
) -> Result:
    result = Result()
    for message in rig.stubs.sandbox.RunSessionCommand(
        sp.RunSessionCommandRequest(
            sandbox_id=session.sandbox_id,
            session_id=session.session_id,
            command=command,
            **fields,  # type: ignore[arg-type]
        ),
        timeout=T,
        metadata=rig.admin if metadata is None else metadata,
    ):
        if message.HasField("exit"):
            result.exit = message.exit
        elif message.output.stream == sandbox_pb2.OUTPUT_STREAM_STDERR:
            result.stderr += message.output.data
        else:
            result.stdout += message.output.data
    return result


def close(rig: Rig, session: sp.Session) -> sp.Session:
    return rig.stubs.sandbox.CloseSession(
        sp.CloseSessionRequest(sandbox_id=session.sandbox_id, session_id=session.session_id),
        timeout=T,
        metadata=rig.admin,
    ).session


def listed(rig: Rig, box: str, session_id: str) -> sp.Session:
    sessions = rig.stubs.sandbox.ListSessions(
        sp.ListSessionsRequest(sandbox_id=box), timeout=T, metadata=rig.admin
    ).sessions
    return next(s for s in sessions if s.session_id == session_id)


def wait_state(rig: Rig, session: sp.Session, state: int, bound: float = 60.0) -> sp.Session:
    """Waits (bounded) until ListSessions shows the session in ``state``."""
    deadline = time.monotonic() + bound
    while True:
        row = listed(rig, session.sandbox_id, session.session_id)
        if row.state == state or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def exec_out(rig: Rig, box: str, script: str) -> str:
    out = b""
    for message in rig.stubs.sandbox.Exec(
        pb.ExecRequest(sandbox_id=box, argv=["sh", "-c", script]), timeout=T, metadata=rig.admin
    ):
        if message.HasField("output"):
            out += message.output.data
    return out.decode()


def processes(rig: Rig, box: str) -> str:
    """Every process's command line in the sandbox, one per line."""
    return exec_out(
        rig, box, "for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' < $f 2>/dev/null; echo; done"
    )


def failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(int(value * 1000))
    return d


def test_directory_variables_and_functions_persist(rig: Rig) -> None:
    session = open_session(rig)
    assert session.state == sp.SESSION_STATE_READY and session.shell == "/bin/sh"
    assert session.session_id.startswith("ses-")
    first = run(
        rig,
        session,
        'mkdir -p /work/a && cd /work/a && export GREETING=hello\ngreet() { echo "$GREETING $1"; }',
    )
    assert first.exit.exit_code == 0 and not first.exit.session_ended
    second = run(rig, session, "pwd; greet world; echo oops >&2; false")
    assert second.stdout == b"/work/a\nhello world\n"
    assert second.stderr == b"oops\n"
    assert second.exit.exit_code == 1
    assert run(rig, session, "exit_code_is() { return $1; }; exit_code_is 7").exit.exit_code == 7
    # A syntax error is the command's failure, not the shell's death.
    broken = run(rig, session, "if then")
    assert broken.exit.exit_code == 2 and b"syntax error" in broken.stderr
    assert run(rig, session, "echo $GREETING").stdout == b"hello\n"
    # Its stdin is not the session's input channel.
    assert run(rig, session, "cat; echo after").stdout == b"after\n"
    row = listed(rig, rig.box, session.session_id)
    assert row.state == sp.SESSION_STATE_READY and row.commands_run == 6
    close(rig, session)


def test_open_takes_env_and_workdir(rig: Rig) -> None:
    session = open_session(rig, env={"COLOR": "blue"}, workdir="/etc")
    assert run(rig, session, 'echo "$COLOR $(pwd)"').stdout == b"blue /etc\n"
    close(rig, session)


def test_output_streams_before_the_command_ends(rig: Rig) -> None:
    session = open_session(rig)
    gate = f"/tmp/gate-{session.session_id}"
    stream = rig.stubs.sandbox.RunSessionCommand(
        sp.RunSessionCommandRequest(
            sandbox_id=rig.box,
            session_id=session.session_id,
            command=f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second",
        ),
        timeout=T,
        metadata=rig.admin,
    )
    first = next(stream)
    # The command is still waiting for the gate: "first" came while it runs.
    assert first.output.data == b"first\n"
    assert listed(rig, rig.box, session.session_id).state == sp.SESSION_STATE_BUSY
    exec_out(rig, rig.box, f"touch {gate}")
    rest = list(stream)
    assert b"".join(m.output.data for m in rest) == b"second\n"
    assert rest[-1].exit.exit_code == 0
    close(rig, session)


def test_the_output_cap_truncates_and_counts(rig: Rig) -> None:
    session = open_session(rig)
    result = run(rig, session, "yes | head -c 100000", max_output_bytes=1000)
    assert len(result.stdout) == 1000
    assert result.exit.truncated and result.exit.output_bytes == 100000
    assert run(rig, session, "echo next").stdout == b"next\n"
    close(rig, session)


def test_a_timeout_kills_the_commands_tree_and_the_session_lives_on(rig: Rig) -> None:
    session = open_session(rig)
    # A background job of an earlier command is not this command's.
    run(rig, session, "export KEPT=yes; sleep 7777 > /dev/null 2>&1 &")
    result = run(
        rig,
        session,
        "sh -c 'sleep 4321 & sleep 4322'; echo not-reached",
        timeout=seconds(1),
    )
    assert result.exit.timed_out and result.exit.exit_code == -1
    assert not result.exit.session_ended
    assert b"not-reached" not in result.stdout
    assert "sleep 432" not in processes(rig, rig.box)
    assert listed(rig, rig.box, session.session_id).state == sp.SESSION_STATE_READY
    # A loop of the shell's own builtins is stopped too.
    looped = run(rig, session, "while :; do :; done", timeout=seconds(1))
    assert looped.exit.timed_out and not looped.exit.session_ended
    # An applet busybox runs in a fork of the shell (no exec) is stopped too.
    forked = run(rig, session, "yes > /dev/null", timeout=seconds(1))
    assert forked.exit.timed_out and not forked.exit.session_ended
    assert run(rig, session, "echo $KEPT").stdout == b"yes\n"
    left = processes(rig, rig.box)
    assert "sleep 7777" in left and "yes" not in left
    exec_out(
        rig,
        rig.box,
        "for d in /proc/[0-9]*; do case \"$(tr '\\000' ' ' < $d/cmdline)\" in "
        "'sleep 7777 ') kill ${d#/proc/};; esac; done 2>/dev/null; true",
    )
    assert "sleep 7777" not in processes(rig, rig.box)
    close(rig, session)


def test_the_next_command_waits_until_the_last_ones_stop_has_ended(rig: Rig) -> None:
    """A stop's sweep outlasts its command's end; it must not sweep the next command.

    The shell returns from a stopped command at the sweep's first signal,
    so the caller has the exit while the killer still reads /proc. Many
    background processes make that sweep long; a fork of the shell that the
    next command made meanwhile looks like the stopped command's own (the
    shell's marker, a recent start) and was killed within milliseconds.
    (The full-suite flake of the test above, seen under load.)
    """
    session = open_session(rig)
    run(
        rig, session, "i=0; while [ $i -lt 150 ]; do sleep 6660 > /dev/null 2>&1 & i=$((i+1)); done"
    )
    try:
        for _ in range(3):
            # Its background job makes the sweep look again after the long
            # first pass, when the next command has started.
            looped = run(
                rig,
                session,
                "sleep 5550 > /dev/null 2>&1 & while :; do :; done",
                timeout=seconds(0.5),
            )
            assert looped.exit.timed_out and not looped.exit.session_ended
            # An applet busybox runs in a fork of the shell, started at once.
            started = time.monotonic()
            forked = run(rig, session, "yes > /dev/null", timeout=seconds(1))
            took = time.monotonic() - started
            assert forked.exit.timed_out, (forked.exit, took)
            assert not forked.exit.session_ended
    finally:
        exec_out(
            rig,
            rig.box,
            "for d in /proc/[0-9]*; do case \"$(tr '\\000' ' ' < $d/cmdline)\" in "
            "'sleep 6660 ') kill ${d#/proc/};; esac; done 2>/dev/null; true",
        )
        close(rig, session)
    assert "sleep 6660" not in processes(rig, rig.box)


def test_a_cancelled_call_kills_the_command_and_the_session_lives_on(rig: Rig) -> None:
    session = open_session(rig)
    stream = rig.stubs.sandbox.RunSessionCommand(
        sp.RunSessionCommandRequest(
            sandbox_id=rig.box,
            session_id=session.session_id,
            command="echo started; sh -c 'sleep 5431 & sleep 5432'",
        ),
        timeout=T,
        metadata=rig.admin,
    )
    assert next(stream).output.data == b"started\n"
    stream.cancel()
    row = wait_state(rig, session, sp.SESSION_STATE_READY)
    assert row.state == sp.SESSION_STATE_READY
    assert "sleep 543" not in processes(rig, rig.box)
    assert run(rig, session, "echo again").stdout == b"again\n"
    close(rig, session)


def test_a_caller_that_does_not_read_neither_blocks_a_timeout_nor_fills_memory(rig: Rig) -> None:
    session = open_session(rig)
    stream = rig.stubs.sandbox.RunSessionCommand(
        sp.RunSessionCommandRequest(
            sandbox_id=rig.box, session_id=session.session_id, command="yes", timeout=seconds(1)
        ),
        timeout=T,
        metadata=rig.admin,
    )
    assert next(stream).output.data.startswith(b"y\n")
    # Not reading: the relay's few chunks and the transport's windows fill, the
    # shell's pipe stalls; the timeout still stops `yes` and frees the session.
    assert wait_state(rig, session, sp.SESSION_STATE_READY).state == sp.SESSION_STATE_READY
    last = list(stream)[-1]
    assert last.exit.timed_out and last.exit.truncated
    assert run(rig, session, "echo free").stdout == b"free\n"
    close(rig, session)


def test_a_busy_session_refuses_a_second_command(rig: Rig) -> None:
    session = open_session(rig)
    gate = f"/tmp/gate-{session.session_id}"
    stream = rig.stubs.sandbox.RunSessionCommand(
        sp.RunSessionCommandRequest(
            sandbox_id=rig.box,
            session_id=session.session_id,
            command=f"echo go; while [ ! -e {gate} ]; do sleep 0.05; done",
        ),
        timeout=T,
        metadata=rig.admin,
    )
    next(stream)
    code, details = failure(lambda: run(rig, session, "true"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "busy" in details
    exec_out(rig, rig.box, f"touch {gate}")
    assert list(stream)[-1].exit.exit_code == 0
    close(rig, session)


def test_a_shell_that_exits_is_dead_and_a_new_session_opens(rig: Rig) -> None:
    session = open_session(rig)
    result = run(rig, session, "echo bye; exit 3")
    assert result.stdout == b"bye\n"
    assert result.exit.session_ended and result.exit.exit_code == -1
    row = wait_state(rig, session, sp.SESSION_STATE_DEAD)
    assert row.state == sp.SESSION_STATE_DEAD and row.end_reason == "shell exited with 3"
    code, details = failure(lambda: run(rig, session, "true"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "dead" in details
    again = open_session(rig)
    assert run(rig, again, "echo back").stdout == b"back\n"
    close(rig, again)


def test_close_and_list(rig: Rig) -> None:
    one, two = open_session(rig), open_session(rig)
    rows = rig.stubs.sandbox.ListSessions(
        sp.ListSessionsRequest(sandbox_id=rig.box), timeout=T, metadata=rig.admin
    ).sessions
    ids = [s.session_id for s in rows]
    assert ids.index(two.session_id) < ids.index(one.session_id)  # newest first
    closed = close(rig, one)
    assert closed.state == sp.SESSION_STATE_CLOSED and closed.end_reason == "closed by caller"
    assert close(rig, one).state == sp.SESSION_STATE_CLOSED  # as it is
    code, details = failure(lambda: run(rig, one, "true"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "closed" in details
    assert listed(rig, rig.box, one.session_id).state == sp.SESSION_STATE_CLOSED
    assert listed(rig, rig.box, two.session_id).state == sp.SESSION_STATE_READY
    assert "\n/bin/sh \n" in "\n" + processes(rig, rig.box)  # two's shell
    close(rig, two)
    # The closed shells are gone from the sandbox (a session's shell is a bare
    # "/bin/sh"; the sandbox's own keepalive has arguments).
    deadline = time.monotonic() + 60
    while "\n/bin/sh \n" in "\n" + processes(rig, rig.box) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "\n/bin/sh \n" not in "\n" + processes(rig, rig.box)


def test_an_idle_session_expires(rig: Rig) -> None:
    session = open_session(rig, idle_timeout=seconds(1))
    assert session.idle_timeout.seconds == 1
    row = wait_state(rig, session, sp.SESSION_STATE_CLOSED)
    assert row.state == sp.SESSION_STATE_CLOSED and row.end_reason == "idle for 1s"


def test_the_cap_on_open_sessions(rig: Rig) -> None:
    box = rig.acquire("t-cap")
    opened = [open_session(rig, box) for _ in range(CAP)]
    code, details = failure(lambda: open_session(rig, box))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "sandbox.max_sessions_per_sandbox" in details
    close(rig, opened[0])
    opened[0] = open_session(rig, box)
    for session in opened:
        close(rig, session)


def test_bad_input_is_refused_by_name(rig: Rig) -> None:
    session = open_session(rig)
    week = 7 * 24 * 3600
    cases: list[tuple[Callable[[], object], grpc.StatusCode, str]] = [
        (lambda: open_session(rig, box=""), grpc.StatusCode.INVALID_ARGUMENT, "sandbox_id"),
        (lambda: open_session(rig, "x" * 129), grpc.StatusCode.INVALID_ARGUMENT, "sandbox_id"),
        (lambda: open_session(rig, shell="sh"), grpc.StatusCode.INVALID_ARGUMENT, "shell"),
        (lambda: open_session(rig, shell="/bin/\0sh"), grpc.StatusCode.INVALID_ARGUMENT, "shell"),
        (
            lambda: open_session(rig, env={"LONGSHORE_EXEC_ID": "x"}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "env",
        ),
        (
            lambda: open_session(rig, idle_timeout=duration_pb2.Duration(seconds=week + 1)),
            grpc.StatusCode.OUT_OF_RANGE,
            "idle_timeout",
        ),
        (
            lambda: open_session(rig, shell="/bin/bash"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "shell",
        ),
        (
            # Not a shell: it echoes its input, so no ready line comes.
            lambda: open_session(rig, shell="/bin/cat"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "did not start as a POSIX shell",
        ),
        (lambda: run(rig, session, ""), grpc.StatusCode.INVALID_ARGUMENT, "command"),
        (lambda: run(rig, session, "echo \0"), grpc.StatusCode.INVALID_ARGUMENT, "command"),
        (
            lambda: run(rig, session, "true", timeout=duration_pb2.Duration(seconds=week + 1)),
            grpc.StatusCode.OUT_OF_RANGE,
            "timeout",
        ),
        (
            lambda: run(rig, session, "true", max_output_bytes=2**31),
            grpc.StatusCode.OUT_OF_RANGE,
            "max_output_bytes",
        ),
        (
            lambda: run(rig, sp.Session(sandbox_id=rig.box, session_id=""), "true"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "session_id",
        ),
        (
            lambda: run(rig, sp.Session(sandbox_id=rig.box, session_id="s" * 65), "true"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "session_id",
        ),
        (
            lambda: run(rig, sp.Session(sandbox_id=rig.box, session_id="ses-nope"), "true"),
            grpc.StatusCode.NOT_FOUND,
            "ses-nope",
        ),
        (
            # Another sandbox's session is not found in this one.
            lambda: run(
                rig, sp.Session(sandbox_id=rig.worker_box, session_id=session.session_id), "true"
            ),
            grpc.StatusCode.NOT_FOUND,
            "not found",
        ),
    ]
    for number, (call, code, word) in enumerate(cases):
        try:
            call()
        except grpc.RpcError as exc:
            got, details = exc.code(), exc.details() or ""
        else:
            pytest.fail(f"case {number} ({word}) was accepted")
        assert (got, word in details) == (code, True), (number, details)
    assert run(rig, session, "echo fine").stdout == b"fine\n"
    close(rig, session)


def test_a_stopped_sandbox_is_failed_precondition_and_ends_its_sessions(rig: Rig) -> None:
    box = rig.acquire("t-stop")
    session = open_session(rig, box)
    client = docker.from_env()
    try:
        client.api.stop(box, timeout=1)
    finally:
        client.close()
    row = wait_state(rig, session, sp.SESSION_STATE_DEAD)
    # "shell exited with 137", with ": the sandbox is exited" when the engine
    # already said so as the shell went.
    assert row.state == sp.SESSION_STATE_DEAD and row.end_reason.startswith("shell exited with")
    code, details = failure(lambda: open_session(rig, box))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not running" in details
    code, _ = failure(lambda: run(rig, session, "true"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_refusals_at_the_gateway_and_at_the_manager(rig: Rig) -> None:
    mine = rig.worker()
    session = open_session(rig, rig.worker_box, mine)
    # The run's holder uses its sandbox, as the sandbox's user.
    assert run(rig, session, "id -u", mine).stdout == b"65534\n"
    reader = auth(rig.stack.keys.reader)
    code, details = failure(lambda: open_session(rig, rig.worker_box, reader))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "needs scope" in details
    code, details = failure(lambda: run(rig, session, "true", reader))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "needs scope" in details
    other = rig.worker("t-other")
    code, details = failure(lambda: open_session(rig, rig.worker_box, other))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "belongs to task 't-work'" in details
    code, details = failure(lambda: run(rig, session, "true", other))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "belongs to task" in details
    code, details = failure(
        lambda: rig.stubs.sandbox.ListSessions(
            sp.ListSessionsRequest(sandbox_id=rig.worker_box), timeout=T, metadata=other
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, details = failure(
        lambda: rig.stubs.sandbox.CloseSession(
            sp.CloseSessionRequest(sandbox_id=rig.worker_box, session_id=session.session_id),
            timeout=T,
            metadata=other,
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # The refused calls changed nothing.
    assert run(rig, session, "echo still", mine).stdout == b"still\n"
    close(rig, session)


def test_a_manager_restart_ends_its_sessions(rig: Rig) -> None:
    """Last in the module: it kills the sandbox manager (SIGKILL) and starts a new one."""
    session = open_session(rig)
    stream = rig.stubs.sandbox.RunSessionCommand(
        sp.RunSessionCommandRequest(
            sandbox_id=rig.box,
            session_id=session.session_id,
            command="echo go; sh -c 'sleep 6543 & sleep 6544'",
        ),
        timeout=T,
        metadata=rig.admin,
    )
    assert next(stream).output.data == b"go\n"
    assert "sleep 654" in processes(rig, rig.box)
    old = rig.stack.processes["sandbox"]
    old.kill()
    old.wait(T)
    new = ServiceProcess(
        old.argv,
        env=old.env,
        health_addr=old.health_addr,
        name="sandbox-2",
        log_dir=old.log_path.parent,
    )
    try:
        new.start(T)
        # The new manager ended the old one's execs (the session's shell and
        # its command's tree) before it served.
        after = processes(rig, rig.box)
        assert "sleep 654" not in after
        assert "\n/bin/sh \n" not in "\n" + after
        code, details = failure(lambda: run(rig, session, "true"))
        assert code == grpc.StatusCode.NOT_FOUND and session.session_id in details
        assert not rig.stubs.sandbox.ListSessions(
            sp.ListSessionsRequest(sandbox_id=rig.box), timeout=T, metadata=rig.admin
        ).sessions
        fresh = open_session(rig)
        assert run(rig, fresh, "echo fresh").stdout == b"fresh\n"
    finally:
        new.stop()
