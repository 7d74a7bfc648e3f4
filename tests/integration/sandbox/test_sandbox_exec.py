"""Exec against the real engine: streaming, status, timeouts, caps, env, stdin."""

from __future__ import annotations

import threading
import time

import docker
import grpc
import pytest
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from tests.support.hardening_audit import FORGED_LABEL

T = 60


@pytest.fixture
def box(stub: SandboxServiceStub) -> str:
    req = sandbox_service_pb2.AcquireSandboxRequest(task_id="exec", profile="coder")
    return stub.AcquireSandbox(req, timeout=T).sandbox.sandbox_id


def run(
    stub: SandboxServiceStub, box: str, argv: list[str], **kw: object
) -> tuple[bytes, bytes, sandbox_pb2.ExecExit, int]:
    req = sandbox_service_pb2.ExecRequest(sandbox_id=box, argv=argv, **kw)  # type: ignore[arg-type]
    out, err, exits, count = b"", b"", [], 0
    for msg in stub.Exec(req, timeout=T):
        count += 1
        if msg.HasField("exit"):
            exits.append(msg.exit)
        elif msg.output.stream == sandbox_pb2.OUTPUT_STREAM_STDERR:
            err += msg.output.data
        else:
            out += msg.output.data
    assert len(exits) == 1
    return out, err, exits[0], count


def test_output_and_exit_status(stub: SandboxServiceStub, box: str) -> None:
    out, err, status, _ = run(stub, box, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (out, err) == (b"out\n", b"err\n")
    assert status.exit_code == 7 and status.signal == 0
    assert not status.timed_out and not status.truncated
    assert status.output_bytes == 8
    assert status.duration.ToTimedelta().total_seconds() > 0


def test_output_streams_as_it_is_produced(stub: SandboxServiceStub, box: str) -> None:
    req = sandbox_service_pb2.ExecRequest(
        sandbox_id=box, argv=["sh", "-c", "echo first; sleep 2; echo second"]
    )
    started = time.monotonic()
    stream = stub.Exec(req, timeout=T)
    first = next(stream)
    assert first.output.data == b"first\n"
    assert time.monotonic() - started < 1.5  # arrived before the command finished
    rest = list(stream)
    assert rest[-1].exit.exit_code == 0


def test_signal_is_reported(stub: SandboxServiceStub, box: str) -> None:
    _, _, status, _ = run(stub, box, ["sh", "-c", "kill -TERM $$"])
    assert status.exit_code == 143 and status.signal == 15


def test_timeout_kills_the_whole_process_tree(
    stub: SandboxServiceStub, box: str, engine: docker.DockerClient
) -> None:
    timeout = duration_pb2.Duration(seconds=1)
    started = time.monotonic()
    _, _, status, _ = run(stub, box, ["sh", "-c", "sleep 60 & sleep 61 & wait"], timeout=timeout)
    assert time.monotonic() - started < 10
    assert status.timed_out and status.exit_code == -1 and status.signal == 9
    ps = engine.api.exec_start(engine.api.exec_create(box, ["ps", "-o", "pid,args"])["Id"])
    assert b"sleep 6" not in ps, ps.decode()


def test_output_beyond_the_cap_is_dropped_and_flagged(stub: SandboxServiceStub, box: str) -> None:
    out, _, status, _ = run(
        stub, box, ["sh", "-c", "yes abcdefgh | head -c 200000"], max_output_bytes=1000
    )
    assert len(out) == 1000
    assert status.truncated and status.output_bytes == 200000 and status.exit_code == 0


def test_env_workdir_stdin_and_user(stub: SandboxServiceStub, box: str) -> None:
    out, _, status, _ = run(
        stub,
        box,
        ["sh", "-c", 'echo "$GREETING"; pwd; id -u; cat'],
        env={"GREETING": "hello"},
        workdir="/tmp",
        stdin=b"from stdin\n",
        user="65534",
    )
    assert out == b"hello\n/tmp\n65534\nfrom stdin\n"
    assert status.exit_code == 0


def test_env_values_never_appear_in_any_argv(stub: SandboxServiceStub, box: str) -> None:
    secret = "s3cr3t-value-in-env"
    # While the command runs, read every process's argv in the sandbox.
    out, _, status, _ = run(
        stub,
        box,
        ["sh", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' < $f; echo; done"],
        env={"API_TOKEN": secret},
    )
    assert status.exit_code == 0
    assert b"sh -c" in out and secret.encode() not in out
    # A timed-out command's killer does not carry it either.
    _, _, status, _ = run(
        stub,
        box,
        ["sleep", "30"],
        env={"API_TOKEN": secret},
        timeout=duration_pb2.Duration(seconds=1),
    )
    assert status.timed_out


def test_several_execs_run_at_once_in_one_sandbox(stub: SandboxServiceStub, box: str) -> None:
    results: list[sandbox_pb2.ExecExit] = []

    def one(i: int) -> None:
        results.append(run(stub, box, ["sh", "-c", f"sleep 1; exit {i}"])[2])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.exit_code for r in results) == [0, 1, 2, 3, 4]
    assert time.monotonic() - started < 4  # ran side by side, not one after another


def test_exec_in_stopped_or_unknown_sandbox(
    stub: SandboxServiceStub, box: str, engine: docker.DockerClient
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        run(stub, "0" * 64, ["true"])
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    engine.api.stop(box, timeout=0)
    with pytest.raises(grpc.RpcError) as info:
        run(stub, box, ["true"])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"sandbox_id": "", "argv": ["true"]}, "sandbox_id"),
        ({"argv": []}, "argv"),
        ({"argv": ["true"], "timeout": duration_pb2.Duration(seconds=-1)}, "timeout"),
    ],
)
def test_invalid_exec_is_invalid_argument(
    stub: SandboxServiceStub, box: str, kw: dict[str, object], field: str
) -> None:
    args: dict[str, object] = {"sandbox_id": box, **kw}
    req = sandbox_service_pb2.ExecRequest(**args)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Exec(req, timeout=T))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(field)


def test_exec_in_another_deployments_sandbox_is_not_found(
    stub: SandboxServiceStub,
    engine: docker.DockerClient,
    sandbox_image: str,
    run_labels: dict[str, str],
) -> None:
    other = engine.api.create_container(
        sandbox_image,
        labels={
            **run_labels,
            "io.longshore.managed": "1",
            "io.longshore.deployment": "elsewhere",
            FORGED_LABEL: "1",
        },
    )["Id"]
    try:
        with pytest.raises(grpc.RpcError) as info:
            run(stub, other, ["true"])
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        engine.api.remove_container(other, force=True)
