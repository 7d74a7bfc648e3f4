"""The gateway's forwarding rules, against stand-in backends that record what arrived.

The gateway and the backends run in-process on real ports and are called
through the generated stubs; the status code the client sees is asserted.
The same rules are exercised against the real services as processes in
``test_gateway_processes.py``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from longshore.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from longshore.kanban.v1 import (
    kanban_service_pb2,
    kanban_service_pb2_grpc,
    task_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from longshore.sandbox.v1 import process_pb2, sandbox_service_pb2, sandbox_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.gateway.auth import key_entry
from services.gateway.server import build_gateway
from services.gateway.settings import GatewaySection, GatewaySettings
from services.runtime.config import PeerSection
from services.runtime.testing import serve_in_process
from tests.integration.gateway.fakes import Seen, kanban_services, sandbox_services
from tests.support.net import free_port

TOKEN = "internal-test-token"
ADMIN, READER, WORKER = "key-admin", "key-reader", "key-worker"
KEYS = (
    key_entry("ops", ["read", "write", "worker", "admin"], ADMIN),
    key_entry("viewer", ["read"], READER),
    key_entry("bot", ["worker"], WORKER),
)
BackendHealth = gateway_service_pb2.BackendHealth
SPANS = InMemorySpanExporter()
TRACER_PROVIDER = TracerProvider()
TRACER_PROVIDER.add_span_processor(SimpleSpanProcessor(SPANS))


class _EndedSpans(SpanProcessor):
    """Wakes a waiting test when a span ends.

    An aborted call's status reaches the client before the server's span
    ends (``abort`` sends it at once), so a test waits for the span instead.
    """

    def __init__(self) -> None:
        self._ended = threading.Condition()

    def on_end(self, span: ReadableSpan) -> None:
        with self._ended:
            self._ended.notify_all()

    def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        with self._ended:
            assert self._ended.wait_for(predicate, timeout), "span never ended"


ENDED = _EndedSpans()
TRACER_PROVIDER.add_span_processor(ENDED)


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@dataclasses.dataclass
class Stack:
    address: str
    channel: grpc.Channel
    seen: Seen

    @property
    def kanban(self) -> kanban_service_pb2_grpc.KanbanServiceStub:
        return kanban_service_pb2_grpc.KanbanServiceStub(self.channel)

    @property
    def worker(self) -> worker_service_pb2_grpc.WorkerServiceStub:
        return worker_service_pb2_grpc.WorkerServiceStub(self.channel)

    @property
    def sandbox(self) -> sandbox_service_pb2_grpc.SandboxServiceStub:
        return sandbox_service_pb2_grpc.SandboxServiceStub(self.channel)

    @property
    def gateway(self) -> gateway_service_pb2_grpc.GatewayServiceStub:
        return gateway_service_pb2_grpc.GatewayServiceStub(self.channel)


@contextmanager
def stack(*, sandbox_up: bool = True, **section: object) -> Iterator[Stack]:
    seen = Seen()
    with (
        serve_in_process(kanban_services(seen), internal_token=TOKEN) as kanban,
        serve_in_process(sandbox_services(seen), internal_token=TOKEN) as sandbox,
    ):
        sandbox_addr = sandbox.address if sandbox_up else f"127.0.0.1:{free_port()}"
        settings = GatewaySettings(
            internal_token=TOKEN,
            shutdown_delay_seconds=0,
            gateway=dataclasses.replace(
                GatewaySection(listen="127.0.0.1:0", api_keys=KEYS), **section
            ),
            kanban=PeerSection(addr=kanban.address),
            sandbox=PeerSection(addr=sandbox_addr),
        )
        gateway = build_gateway(settings, tracer_provider=TRACER_PROVIDER)
        gateway.server.start()
        try:
            with grpc.insecure_channel(gateway.server.address) as channel:
                yield Stack(gateway.server.address, channel, seen)
        finally:
            gateway.server.stop(0)
            gateway.close()


@pytest.fixture(scope="module")
def gw() -> Iterator[Stack]:
    with stack() as s:
        yield s


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code(), info.value.details()


def test_missing_or_wrong_key_is_unauthenticated(gw: Stack) -> None:
    req = kanban_service_pb2.GetTaskRequest(task_id="t1")
    code, details = code_of(lambda: gw.kanban.GetTask(req, timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "missing API key" in details
    code, _ = code_of(lambda: gw.kanban.GetTask(req, timeout=5, metadata=auth("nope")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(
        lambda: gw.gateway.GetStatus(gateway_service_pb2.GetStatusRequest(), timeout=5)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_key_without_the_scope_is_permission_denied(gw: Stack) -> None:
    req = kanban_service_pb2.CreateTaskRequest(task=task_pb2.Task(title="x"))
    code, details = code_of(lambda: gw.kanban.CreateTask(req, timeout=5, metadata=auth(READER)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "needs scope 'write'" in details
    claim = worker_service_pb2.ClaimTaskRequest(profile="p", worker_id="w")
    code, details = code_of(lambda: gw.worker.ClaimTask(claim, timeout=5, metadata=auth(READER)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'worker'" in details


def test_forwards_and_names_the_principal_to_the_backend(gw: Stack) -> None:
    reply = gw.kanban.GetTask(
        kanban_service_pb2.GetTaskRequest(task_id="t1"),
        timeout=5,
        metadata=(*auth(READER), ("longshore-principal", "spoofed"), ("x-request-id", "abc")),
    )
    assert reply.task.title == "one"
    assert gw.seen.metadata["longshore-principal"] == "viewer"
    assert gw.seen.metadata["longshore-internal-token"] == TOKEN
    assert gw.seen.metadata["x-request-id"] == "abc"
    assert "authorization" not in gw.seen.metadata
    # The backend's parent is the gateway's server span (the gateway opens no client span).
    _, trace_id, parent_id, _ = gw.seen.metadata["traceparent"].split("-")
    ENDED.wait_for(lambda: _spans_named("/longshore.kanban.v1.KanbanService/GetTask", trace_id))
    spans = {format(s.context.span_id, "016x"): s for s in SPANS.get_finished_spans()}
    server = spans[parent_id]
    assert format(server.context.trace_id, "032x") == trace_id
    assert server.kind == SpanKind.SERVER
    assert server.name == "/longshore.kanban.v1.KanbanService/GetTask"
    assert server.attributes is not None and server.attributes["longshore.principal"] == "viewer"


def test_upstream_client_errors_pass_through_unchanged(gw: Stack) -> None:
    code, details = code_of(
        lambda: gw.kanban.GetTask(
            kanban_service_pb2.GetTaskRequest(task_id="zz"), timeout=5, metadata=auth(ADMIN)
        )
    )
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "task 'zz' not found")
    code, details = code_of(
        lambda: gw.kanban.CreateTask(
            kanban_service_pb2.CreateTaskRequest(task=task_pb2.Task()),
            timeout=5,
            metadata=auth(ADMIN),
        )
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "task.title: required")


def _spans_named(name: str, trace_id: str) -> list[ReadableSpan]:
    return [
        s
        for s in SPANS.get_finished_spans()
        if s.name == name and format(s.context.trace_id, "032x") == trace_id
    ]


def test_server_span_joins_the_callers_trace_and_records_the_status(gw: Stack) -> None:
    trace_id, caller_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    traceparent = (("traceparent", f"00-{trace_id}-{caller_span}-01"),)
    get = "/longshore.kanban.v1.KanbanService/GetTask"
    code, _ = code_of(
        lambda: gw.kanban.GetTask(
            kanban_service_pb2.GetTaskRequest(task_id="zz"),
            timeout=5,
            metadata=(*auth(ADMIN), *traceparent),
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    ENDED.wait_for(lambda: _spans_named(get, trace_id))
    # The gateway's one span of the call (no client span of its own): its
    # context is what the backend received.
    [server] = _spans_named(get, trace_id)
    assert server.kind == SpanKind.SERVER
    assert server.parent is not None and format(server.parent.span_id, "016x") == caller_span
    _, upstream_trace, upstream_parent, _ = gw.seen.metadata["traceparent"].split("-")
    assert (upstream_trace, upstream_parent) == (trace_id, format(server.context.span_id, "016x"))
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert server.attributes["longshore.principal"] == "ops"
    # The caller's mistake is not the server's error.
    assert server.status.status_code == StatusCode.UNSET

    # Refused at the gateway (the gateway's own abort): the span says so too.
    code, _ = code_of(
        lambda: gw.kanban.CreateTask(
            kanban_service_pb2.CreateTaskRequest(task=task_pb2.Task(title="x")),
            timeout=5,
            metadata=(*auth(READER), *traceparent),
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    create = "/longshore.kanban.v1.KanbanService/CreateTask"
    ENDED.wait_for(lambda: _spans_named(create, trace_id))
    [refused] = _spans_named(create, trace_id)
    assert refused.kind == SpanKind.SERVER and refused.attributes is not None
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]

    # Probes are not traced.
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health_pb2_grpc.HealthStub(gw.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5, metadata=traceparent
    )
    assert not _spans_named("/grpc.health.v1.Health/Check", trace_id)


def test_deadline_propagates_to_a_long_poll(gw: Stack) -> None:
    claim = worker_service_pb2.ClaimTaskRequest(
        profile="p", worker_id="w", wait=Duration(seconds=30)
    )
    gw.seen.claim_ended.clear()
    started = time.monotonic()
    code, _ = code_of(lambda: gw.worker.ClaimTask(claim, timeout=0.5, metadata=auth(WORKER)))
    elapsed = time.monotonic() - started
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 2.0
    assert gw.seen.time_remaining is not None and gw.seen.time_remaining <= 0.6
    # The backend's long poll saw its own deadline pass and ended too.
    assert gw.seen.claim_ended.wait(5)


def test_cancelling_a_long_poll_reaches_the_backend(gw: Stack) -> None:
    claim = worker_service_pb2.ClaimTaskRequest(
        profile="p", worker_id="w", wait=Duration(seconds=30)
    )
    gw.seen.claim_ended.clear()
    gw.seen.metadata = {}
    future = gw.worker.ClaimTask.future(claim, timeout=30, metadata=auth(WORKER))
    deadline = time.monotonic() + 5
    while gw.seen.metadata.get("longshore-principal") != "bot":
        assert time.monotonic() < deadline, "the claim never reached the backend"
        time.sleep(0.05)
    future.cancel()
    assert gw.seen.claim_ended.wait(5)


def test_stream_cancellation_reaches_the_backend(gw: Stack) -> None:
    gw.seen.stream_cancelled.clear()
    stream = gw.kanban.WatchEvents(
        kanban_service_pb2.WatchEventsRequest(), timeout=30, metadata=auth(READER)
    )
    first = next(stream)
    assert first.event.kind == "created"
    assert not gw.seen.stream_cancelled.is_set()
    stream.cancel()
    assert gw.seen.stream_cancelled.wait(5)


def test_stream_deadline_ends_promptly(gw: Stack) -> None:
    gw.seen.stream_cancelled.clear()
    stream = gw.kanban.WatchEvents(
        kanban_service_pb2.WatchEventsRequest(), timeout=0.7, metadata=auth(READER)
    )
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.5


def _run(*messages: process_pb2.RunProcessRequest) -> Iterator[process_pb2.RunProcessRequest]:
    yield from messages


def _start(*argv: str) -> process_pb2.RunProcessRequest:
    config = process_pb2.ProcessConfig(argv=list(argv))
    return process_pb2.RunProcessRequest(start=process_pb2.RunProcessStart(config=config))


def test_a_bidi_stream_is_relayed_both_ways_to_its_half_close(gw: Stack) -> None:
    gw.seen.bidi_half_closed.clear()
    requests = _run(
        _start("cat"),
        process_pb2.RunProcessRequest(stdin=b"one"),
        process_pb2.RunProcessRequest(stdin=b"two"),
    )
    replies = list(gw.sandbox.RunProcess(requests, timeout=10, metadata=auth(WORKER)))
    kinds = [r.event.WhichOneof("event") for r in replies]
    assert kinds == ["started", "output", "output", "exit"]
    assert replies[0].event.started.argv == ["cat"]
    assert [r.event.output.chunk.data for r in replies[1:3]] == [b"one", b"two"]
    # The caller's half-close reached the backend; so did the vouched principal.
    assert gw.seen.bidi_half_closed.is_set()
    assert gw.seen.metadata["longshore-principal"] == "bot"
    assert gw.seen.metadata["longshore-internal-token"] == TOKEN
    # The interceptor's server span covers the bidi call too.
    _, trace_id, _, _ = gw.seen.metadata["traceparent"].split("-")
    ENDED.wait_for(
        lambda: _spans_named("/longshore.sandbox.v1.SandboxService/RunProcess", trace_id)
    )


def test_a_bidi_stream_needs_the_scope_and_passes_upstream_errors(gw: Stack) -> None:
    code, details = code_of(
        lambda: list(gw.sandbox.RunProcess(_run(_start("x")), timeout=10, metadata=auth(READER)))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "RunProcess" in details
    signal = process_pb2.RunProcessRequest(signal=15)
    code, details = code_of(
        lambda: list(
            gw.sandbox.RunProcess(_run(_start("x"), signal), timeout=10, metadata=auth(ADMIN))
        )
    )
    assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION, "signal 15: refused")


def test_cancelling_a_bidi_stream_reaches_the_backend(gw: Stack) -> None:
    gw.seen.bidi_cancelled.clear()
    held = threading.Event()

    def requests() -> Iterator[process_pb2.RunProcessRequest]:
        yield _start("sleep")
        held.wait(30)  # keeps the request side open until the test is done

    call = gw.sandbox.RunProcess(requests(), timeout=30, metadata=auth(ADMIN))
    try:
        assert next(call).event.HasField("started")
        assert not gw.seen.bidi_cancelled.is_set()
        call.cancel()
        assert gw.seen.bidi_cancelled.wait(10)
    finally:
        held.set()


def test_status_reports_each_backend_and_the_scopes(gw: Stack) -> None:
    reply = gw.gateway.GetStatus(
        gateway_service_pb2.GetStatusRequest(), timeout=5, metadata=auth(READER)
    )
    assert [b.name for b in reply.backends] == ["kanban", "sandbox"]
    assert all(b.health == BackendHealth.BACKEND_HEALTH_SERVING for b in reply.backends)
    assert all(b.latency_ms > 0 for b in reply.backends)
    assert list(reply.scopes) == ["read"]
    assert reply.version


def test_health_and_reflection_need_no_key(gw: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(gw.channel).Check(
        health_pb2.HealthCheckRequest(service="longshore.kanban.v1.KanbanService"), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
    replies = list(
        stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {
        "longshore.gateway.v1.GatewayService",
        "longshore.kanban.v1.KanbanService",
        "longshore.kanban.v1.WorkerService",
        "longshore.sandbox.v1.SandboxService",
    } <= names


def test_backend_down_is_unavailable_naming_it() -> None:
    with stack(sandbox_up=False) as s:
        code, details = code_of(
            lambda: s.sandbox.ListSandboxes(
                sandbox_service_pb2.ListSandboxesRequest(), timeout=5, metadata=auth(ADMIN)
            )
        )
        assert code == grpc.StatusCode.UNAVAILABLE
        assert details.startswith("sandbox backend (127.0.0.1:")

        # The platform's failure: an error on the gateway's span.
        def listed() -> list[ReadableSpan]:
            name = "/longshore.sandbox.v1.SandboxService/ListSandboxes"
            return [span for span in SPANS.get_finished_spans() if span.name == name]

        ENDED.wait_for(lambda: {span.kind for span in listed()} >= {SpanKind.SERVER})
        assert {span.kind for span in listed()} == {SpanKind.SERVER}
        assert all(span.status.status_code == StatusCode.ERROR for span in listed())
        reply = s.gateway.GetStatus(
            gateway_service_pb2.GetStatusRequest(), timeout=5, metadata=auth(ADMIN)
        )
        health = {b.name: b.health for b in reply.backends}
        assert health == {
            "kanban": BackendHealth.BACKEND_HEALTH_SERVING,
            "sandbox": BackendHealth.BACKEND_HEALTH_UNREACHABLE,
        }


def test_rate_limit_per_key_is_resource_exhausted() -> None:
    with stack(rate_limit_rps=0.01, rate_limit_burst=2) as s:
        req = kanban_service_pb2.GetTaskRequest(task_id="t1")
        s.kanban.GetTask(req, timeout=5, metadata=auth(READER))
        s.kanban.GetTask(req, timeout=5, metadata=auth(READER))
        code, details = code_of(lambda: s.kanban.GetTask(req, timeout=5, metadata=auth(READER)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'viewer'" in details
        # Another key has its own bucket.
        s.kanban.GetTask(req, timeout=5, metadata=auth(ADMIN))


def test_message_size_is_bounded_both_ways() -> None:
    with stack(max_message_bytes=64 * 1024) as s:
        big = kanban_service_pb2.CreateTaskRequest(
            task=task_pb2.Task(title="big", description="x" * 100_000)
        )
        code, _ = code_of(lambda: s.kanban.CreateTask(big, timeout=5, metadata=auth(ADMIN)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        out = kanban_service_pb2.GetRunOutputRequest(run_id="r", limit=100_000)
        code, details = code_of(lambda: s.kanban.GetRunOutput(out, timeout=5, metadata=auth(ADMIN)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "gateway.max_message_bytes" in details
        stdin = process_pb2.RunProcessRequest(stdin=b"x" * 100_000)
        code, _ = code_of(
            lambda: list(
                s.sandbox.RunProcess(_run(_start("cat"), stdin), timeout=5, metadata=auth(ADMIN))
            )
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        small = kanban_service_pb2.GetRunOutputRequest(run_id="r", limit=1000)
        assert len(s.kanban.GetRunOutput(small, timeout=5, metadata=auth(ADMIN)).data) == 1000
