"""JSON-lines logs carry trace context and extras, never break on odd values."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.runtime.logs import configure_logging


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("demo", "DEBUG", stream=stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_lines_are_json_with_service_and_extras(captured: io.StringIO) -> None:
    logging.getLogger("demo.mod").info("acquired %s", "box-1", extra={"task_id": "t1"})
    entry = json.loads(captured.getvalue().splitlines()[-1])
    assert entry["msg"] == "acquired box-1"
    assert entry["service"] == "demo"
    assert entry["logger"] == "demo.mod"
    assert entry["level"] == "INFO"
    assert entry["task_id"] == "t1"
    assert "trace_id" not in entry


def test_trace_and_span_ids_inside_a_span(captured: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("op") as span:
        logging.getLogger("demo").warning("inside")
        ctx = span.get_span_context()
    entry = json.loads(captured.getvalue().splitlines()[-1])
    assert entry["trace_id"] == format(ctx.trace_id, "032x")
    assert entry["span_id"] == format(ctx.span_id, "016x")


def test_exceptions_and_unserialisable_extras(captured: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("demo").exception("failed", extra={"obj": object()})
    entry = json.loads(captured.getvalue().splitlines()[-1])
    assert "ValueError: boom" in entry["exc"]
    assert entry["obj"].startswith("<object")


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="LONGSHORE_LOG_LEVEL"):
        configure_logging("demo", "LOUD", stream=io.StringIO())
