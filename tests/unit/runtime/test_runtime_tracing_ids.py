"""A service with nothing to export to records no spans, yet every call keeps a trace id."""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import TraceFlags

from services.runtime.tracing import IdOnlyTracerProvider, configure_tracing


def test_without_an_endpoint_spans_carry_ids_and_record_nothing() -> None:
    provider = configure_tracing("demo", set_global=False)
    assert isinstance(provider, IdOnlyTracerProvider)
    tracer = provider.get_tracer(__name__)
    root = tracer.start_span("root", attributes={"a": "b"})
    ctx = root.get_span_context()
    assert not root.is_recording()
    assert ctx.is_valid and ctx.trace_flags.sampled
    with tracer.start_as_current_span("child", context=trace.set_span_in_context(root)) as child:
        assert trace.get_current_span() is child
        inner = child.get_span_context()
        assert inner.trace_id == ctx.trace_id and inner.span_id != ctx.span_id
        # What a log line and a stored trace parent read: the call's ids.
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        assert f"{ctx.trace_id:032x}" in carrier["traceparent"]
    assert trace.get_current_span() is not child
    # A new root starts a new trace.
    assert tracer.start_span("other").get_span_context().trace_id != ctx.trace_id


def test_a_caller_that_did_not_sample_stays_unsampled() -> None:
    tracer = IdOnlyTracerProvider().get_tracer(__name__)
    parent = trace.NonRecordingSpan(
        trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(0))
    )
    span = tracer.start_span("call", context=trace.set_span_in_context(parent))
    assert span.get_span_context().trace_id == 0xABC
    assert not span.get_span_context().trace_flags.sampled


def test_a_service_further_on_that_exports_records_the_callers_trace() -> None:
    exported = InMemorySpanExporter()
    exporting = TracerProvider()
    exporting.add_span_processor(SimpleSpanProcessor(exported))
    front = IdOnlyTracerProvider().get_tracer(__name__).start_span("front")
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(front))
    # The next service extracts the context from the call's metadata.
    back = exporting.get_tracer(__name__).start_span("back", context=propagate.extract(carrier))
    back.end()
    (span,) = exported.get_finished_spans()
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == front.get_span_context().trace_id
    assert span.parent.span_id == front.get_span_context().span_id


def test_an_exporter_gives_the_recording_provider() -> None:
    provider = configure_tracing("demo", exporter=InMemorySpanExporter(), set_global=False)
    assert isinstance(provider, TracerProvider)
    assert provider.get_tracer(__name__).start_span("s").is_recording()
    provider.shutdown()
