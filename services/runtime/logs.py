"""JSON-lines logging on stdout, with the current trace and span ids.

Every service calls :func:`configure_logging` once at start. Modules log with
``logging.getLogger(__name__)``, lazy ``%`` arguments and context in
``extra=``; each record becomes one JSON object per line (what ``docker logs``
shows and what ``longshore up`` rotates into files).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from opentelemetry import trace

# Attributes every LogRecord has; anything else came from `extra=`.
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object with trace context and extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            entry["trace_id"] = format(ctx.trace_id, "032x")
            entry["span_id"] = format(ctx.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Sends every log record to ``stream`` (stdout) as JSON lines.

    Args:
        service: Short service name (``sandbox``, ``kanban``, ...).
        level: Root log level name.
        stream: Where to write; stdout by default.

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"LONGSHORE_LOG_LEVEL: unknown log level {level!r}")
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # gRPC's and Docker's own chatter at INFO is noise in production logs.
    for noisy in ("urllib3", "docker", "grpc._cython"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
