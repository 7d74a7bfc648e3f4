"""Fuzz every RPC of every service through a real gateway to real kanban and sandbox.

Requests are built from the descriptors of GatewayService, KanbanService,
WorkerService and SandboxService (random and boundary values for every field,
see :mod:`tests.integration.fuzz.generator`), plus raw malformed bytes, and
sent with an admin key. No answer may be INTERNAL or UNKNOWN, and every
service must still be SERVING at the end.

CI runs a fixed seed within a bounded budget; ``LONGSHORE_FUZZ_SEED`` and
``LONGSHORE_FUZZ_BUDGET_SECONDS`` allow a longer random run (seed ``random``
draws one and prints it).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from longshore.gateway.v1 import gateway_service_pb2
from longshore.kanban.v1 import (
    board_pb2,
    kanban_service_pb2,
    profile_pb2,
    task_pb2,
    worker_service_pb2,
)
from longshore.sandbox.v1 import sandbox_service_pb2

from tests.integration.fuzz.generator import Generator, Vocabulary, malformed
from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.support.docker_env import DEPLOYMENT_LABEL

SERVICES = (
    (gateway_service_pb2, "GatewayService"),
    (kanban_service_pb2, "KanbanService"),
    (worker_service_pb2, "WorkerService"),
    (sandbox_service_pb2, "SandboxService"),
)
FORBIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
DEFAULT_SEED = 20261201
DEFAULT_BUDGET_SECONDS = 45.0
CALL_TIMEOUT_SECONDS = 5.0
STREAM_MESSAGES = 3


@dataclass(frozen=True)
class Finding:
    """One forbidden answer: enough to reproduce it."""

    method: str
    code: str
    details: str
    request: str


@dataclass
class Tally:
    """What the run sent and saw."""

    calls: int = 0
    malformed: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def saw(self, code: grpc.StatusCode) -> None:
        self.codes[code.name] = self.codes.get(code.name, 0) + 1


def _seed() -> int:
    raw = os.environ.get("LONGSHORE_FUZZ_SEED", "")
    if raw == "random":
        return random.SystemRandom().randrange(2**32)
    return int(raw) if raw else DEFAULT_SEED


def _methods() -> list[MethodDescriptor]:
    return [
        method
        for module, name in SERVICES
        for method in module.DESCRIPTOR.services_by_name[name].methods
    ]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    run_id: str,
    sandbox_image: str,
    docker_client: docker.DockerClient,
) -> Iterator[RealStack]:
    home = tmp_path_factory.mktemp("fuzz-stack")
    deployment = f"t{run_id}-fuzz"
    try:
        with real_stack(
            home,
            deployment=deployment,
            image=sandbox_image,
            gateway_env={
                "LONGSHORE_GATEWAY_RATE_LIMIT_RPS": "100000",
                "LONGSHORE_GATEWAY_RATE_LIMIT_BURST": "100000",
            },
        ) as s:
            yield s
    finally:
        # Every container the fuzzed sandbox manager made for this deployment.
        for container in docker_client.containers.list(
            all=True, filters={"label": f"{DEPLOYMENT_LABEL}={deployment}"}
        ):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)


def _vocabulary(stack: RealStack, image: str) -> Vocabulary:
    """Create a board, profiles and tasks, so fuzzed ids sometimes exist."""
    meta = auth(stack.keys.admin)
    with stack.channel() as channel:
        stubs = Stubs(channel)
        stubs.kanban.CreateBoard(
            kanban_service_pb2.CreateBoardRequest(board=board_pb2.Board(board_id="fz")),
            timeout=30,
            metadata=meta,
        )
        for name, executor in (("fz-ext", "EXTERNAL"), ("fz-none", "NONE")):
            stubs.kanban.CreateProfile(
                kanban_service_pb2.CreateProfileRequest(
                    profile=profile_pb2.Profile(
                        name=name, executor=profile_pb2.Executor.Value(f"EXECUTOR_{executor}")
                    )
                ),
                timeout=30,
                metadata=meta,
            )
        ids = ["default", "fz", "fz-ext", "fz-none", "w1"]
        for i in range(4):
            task = stubs.kanban.CreateTask(
                kanban_service_pb2.CreateTaskRequest(
                    task=task_pb2.Task(
                        title=f"fuzz {i}", board_id="fz", assignee="fz-ext" if i % 2 else ""
                    )
                ),
                timeout=30,
                metadata=meta,
            ).task
            ids.append(task.task_id)
        # A run with output, so the run-reading and worker calls get past NOT_FOUND.
        claim = stubs.worker.ClaimTask(
            worker_service_pb2.ClaimTaskRequest(profile="fz-ext", worker_id="w1"),
            timeout=30,
            metadata=meta,
        )
        if claim.run_id:
            ids.append(claim.run_id)
            stubs.worker.AppendOutput(
                worker_service_pb2.AppendOutputRequest(run_id=claim.run_id, data=b"out\n" * 100),
                timeout=30,
                metadata=meta,
            )
    return Vocabulary(ids=ids, images=[image, "", "nonexistent.invalid/fuzz:1"])


def _call(
    channel: grpc.Channel, method: MethodDescriptor, payload: bytes, meta: Any
) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        stream: Any = channel.unary_stream(path)(
            payload, timeout=CALL_TIMEOUT_SECONDS, metadata=meta
        )
        try:
            for index, _ in enumerate(stream):
                if index + 1 >= STREAM_MESSAGES:
                    stream.cancel()
                    return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
            return grpc.StatusCode.OK if code == grpc.StatusCode.CANCELLED else code
        return grpc.StatusCode.OK
    try:
        channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT_SECONDS, metadata=meta)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def _details_of(channel: grpc.Channel, method: MethodDescriptor, payload: bytes, meta: Any) -> str:
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path)(
                payload, timeout=CALL_TIMEOUT_SECONDS, metadata=meta
            ):
                break
        else:
            channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT_SECONDS, metadata=meta)
    except grpc.RpcError as exc:
        return str(exc.details())[:300]  # type: ignore[attr-defined]
    return "(passed when repeated)"


def _describe(request: Message | None, payload: bytes) -> str:
    if request is None:
        return f"raw bytes {payload[:80]!r} ({len(payload)} bytes)"
    text = str(request).replace("\n", " ")
    return text[:400] + ("…" if len(text) > 400 else "")


def _fuzz(stack: RealStack, image: str, seed: int, budget: float) -> Tally:
    rng = random.Random(seed)
    generator = Generator(rng, _vocabulary(stack, image))
    methods = _methods()
    meta = auth(stack.keys.admin)
    tally = Tally()
    valid: list[bytes] = []
    deadline = time.monotonic() + budget
    with stack.channel() as channel:
        while time.monotonic() < deadline:
            method = methods[tally.calls % len(methods)]
            request: Message | None = None
            if rng.random() < 0.15:
                payload = malformed(rng, valid)
                tally.malformed += 1
            else:
                request = generator.request(method.input_type)
                payload = request.SerializeToString()
                if len(valid) < 200 and len(payload) < 4096:
                    valid.append(payload)
            code = _call(channel, method, payload, meta)
            tally.calls += 1
            tally.saw(code)
            if code in FORBIDDEN:
                tally.findings.append(
                    Finding(
                        method=f"{method.containing_service.name}/{method.name}",
                        code=code.name,
                        details=_details_of(channel, method, payload, meta),
                        request=_describe(request, payload),
                    )
                )
    return tally


def _serving(stack: RealStack) -> dict[str, str]:
    states: dict[str, str] = {}
    for name, address in (
        ("sandbox", stack.sandbox_addr),
        ("kanban", stack.kanban_addr),
        ("gateway", stack.gateway_addr),
    ):
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30
            )
        states[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return states


def test_malformed_bytes_through_the_gateway_are_invalid_argument(stack: RealStack) -> None:
    meta = auth(stack.keys.admin)
    answers: dict[str, tuple[str, str]] = {}
    with stack.channel() as channel:
        for method in _methods():
            path = f"/{method.containing_service.full_name}/{method.name}"
            try:
                if method.server_streaming:
                    list(channel.unary_stream(path)(b"\xff\xff\xff", timeout=30, metadata=meta))
                else:
                    channel.unary_unary(path)(b"\xff\xff\xff", timeout=30, metadata=meta)
                answers[path] = ("OK", "")
            except grpc.RpcError as exc:
                answers[path] = (exc.code().name, exc.details())  # type: ignore[attr-defined]
    expected = {
        f"/{m.containing_service.full_name}/{m.name}": (
            "INVALID_ARGUMENT",
            f"request: malformed {m.input_type.name} bytes",
        )
        for m in _methods()
    }
    assert answers == expected


BUDGET_SECONDS = float(os.environ.get("LONGSHORE_FUZZ_BUDGET_SECONDS", DEFAULT_BUDGET_SECONDS))


# The suite's 300 s timeout would cut a long run short: allow the budget plus start-up.
@pytest.mark.timeout(BUDGET_SECONDS + 240)
def test_no_rpc_answers_internal_or_unknown_and_every_service_stays_serving(
    stack: RealStack, sandbox_image: str
) -> None:
    seed = _seed()
    budget = BUDGET_SECONDS
    tally = _fuzz(stack, sandbox_image, seed, budget)
    print(
        f"fuzz seed={seed} budget={budget:.0f}s calls={tally.calls} "
        f"malformed={tally.malformed} codes={dict(sorted(tally.codes.items()))}"
    )
    for finding in tally.findings[:40]:
        print(f"FINDING {finding}")
    assert tally.calls >= len(_methods()), "the budget did not cover every method once"
    assert tally.codes.get("OK", 0) > 0, "no call succeeded: the fuzzer is not reaching handlers"
    states = _serving(stack)
    assert states == {"sandbox": "SERVING", "kanban": "SERVING", "gateway": "SERVING"}, (
        states,
        stack.logs(),
    )
    assert not tally.findings, (
        f"seed {seed}: {len(tally.findings)} INTERNAL/UNKNOWN answers, first: "
        f"{tally.findings[:5]}\n{stack.logs()[-6000:]}"
    )
