"""The OTLP receiver fed by the real OTLP/gRPC exporter."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tests.support.otlp import OtlpReceiver


def _provider(receiver: OtlpReceiver, *, batch: bool) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "longshore-probe"}))
    exporter = OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True)
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return provider


def test_receives_spans_with_parent_kind_attributes_and_links(otlp_receiver: OtlpReceiver) -> None:
    provider = _provider(otlp_receiver, batch=False)
    tracer = provider.get_tracer("harness")
    try:
        with tracer.start_as_current_span("earlier") as earlier:
            pass
        with (
            tracer.start_as_current_span(
                "parent", kind=SpanKind.SERVER, attributes={"rpc.method": "Probe"}
            ) as parent,
            tracer.start_as_current_span(
                "child",
                kind=SpanKind.CLIENT,
                attributes={"n": 3, "ok": True, "tags": ["a", "b"]},
                links=[Link(earlier.get_span_context())],
            ) as child,
        ):
            child.add_event("sent")
            child.set_status(Status(StatusCode.ERROR, "boom"))
    finally:
        provider.shutdown()

    spans = otlp_receiver.wait_for(lambda got: {"parent", "child"} <= {s.name for s in got})
    by_name = {s.name: s for s in spans}
    got_parent, got_child = by_name["parent"], by_name["child"]
    assert got_parent.parent_span_id == ""
    assert got_parent.span_id == format(parent.get_span_context().span_id, "016x")
    assert got_child.parent_span_id == got_parent.span_id
    assert got_child.trace_id == got_parent.trace_id
    assert got_child.trace_id == format(child.get_span_context().trace_id, "032x")
    assert got_parent.service_name == "longshore-probe"
    assert (got_parent.kind, got_child.kind) == ("SERVER", "CLIENT")
    assert got_parent.attributes == {"rpc.method": "Probe"}
    assert got_child.attributes == {"n": 3, "ok": True, "tags": ("a", "b")}
    assert got_child.links == ((by_name["earlier"].trace_id, by_name["earlier"].span_id),)
    assert (got_child.status_code, got_child.status_message) == ("ERROR", "boom")
    assert got_child.events == ("sent",)
    assert got_child.scope_name == "harness"
    assert got_child.end_time_unix_nano >= got_child.start_time_unix_nano > 0


def test_batch_exporter_wait_for_and_clear(otlp_receiver: OtlpReceiver) -> None:
    provider = _provider(otlp_receiver, batch=True)
    tracer = provider.get_tracer("harness")
    try:
        for i in range(5):
            with tracer.start_as_current_span(f"op-{i}"):
                pass
        provider.force_flush()
        spans = otlp_receiver.wait_for(lambda got: len(got) >= 5, timeout=10)
        assert sorted(s.name for s in spans) == [f"op-{i}" for i in range(5)]
        otlp_receiver.clear()
        assert otlp_receiver.spans() == []
        with tracer.start_as_current_span("after-clear"):
            pass
        provider.force_flush()
        assert otlp_receiver.wait_for_span("after-clear").parent_span_id == ""
    finally:
        provider.shutdown()


def test_wait_for_times_out_naming_what_arrived(otlp_receiver: OtlpReceiver) -> None:
    assert otlp_receiver.endpoint.startswith("http://127.0.0.1:")
    with pytest.raises(TimeoutError, match="received 0"):
        otlp_receiver.wait_for(bool, timeout=0.2)
