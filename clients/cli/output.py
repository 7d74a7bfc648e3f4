"""Printing: aligned tables for people, JSON for scripts, progress on stderr."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

_FRAMES = "|/-\\"


def to_dict(message: Message) -> dict[str, Any]:
    """A message as a JSON-ready dict, with proto field names."""
    return MessageToDict(message, preserving_proto_field_name=True)


def enum_label(name: str, prefix: str) -> str:
    """``TASK_STATUS_READY`` with prefix ``TASK_STATUS_`` → ``ready``."""
    return name.removeprefix(prefix).lower() if name else ""


def fmt_time(ts: Timestamp, *, now: datetime | None = None) -> str:
    """A timestamp as a short relative age (``42s ago``), or ``-`` when unset."""
    if not ts.seconds and not ts.nanos:
        return "-"
    moment = ts.ToDatetime(tzinfo=UTC)
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def fmt_duration(duration: Duration) -> str:
    """A duration as seconds with millisecond precision (``1.250s``)."""
    return f"{duration.ToTimedelta().total_seconds():.3f}s"


class Output:
    """Where a command writes: human text or JSON."""

    def __init__(
        self, *, json_mode: bool, out: IO[str] | None = None, err: IO[str] | None = None
    ) -> None:
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def line(self, text: str = "") -> None:
        """Print a line for people (suppressed in JSON mode)."""
        if not self.json_mode:
            self.out.write(text + "\n")
            self.out.flush()

    def raw(self, data: bytes) -> None:
        """Write bytes as they are (command output), decoding only when stdout is text-only."""
        buffer = getattr(self.out, "buffer", None)
        if buffer is not None:
            self.out.flush()
            buffer.write(data)
            buffer.flush()
        else:
            self.out.write(data.decode("utf-8", "replace"))
            self.out.flush()

    def json(self, value: Any) -> None:
        """Print a JSON value (dicts, lists, or a protobuf message)."""
        if isinstance(value, Message):
            value = to_dict(value)
        self.out.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
        self.out.flush()

    def message(self, message: Message, human: str) -> None:
        """Print ``message`` as JSON, or the human line."""
        if self.json_mode:
            self.json(message)
        else:
            self.line(human)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Print aligned columns; an empty table says so."""
        if not rows:
            self.line("(none)")
            return
        cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        for row in cells:
            self.line("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())

    def warn(self, text: str) -> None:
        """Print a note on stderr (both modes)."""
        self.err.write(text + "\n")
        self.err.flush()

    @contextlib.contextmanager
    def progress(self, text: str, *, delay: float = 0.3) -> Iterator[None]:
        """Show a spinner on a terminal's stderr while a slow step runs.

        Nothing is drawn when stderr is not a terminal, or when the step ends
        within ``delay`` seconds.
        """
        if not self.err.isatty():
            yield
            return
        done = threading.Event()

        def spin() -> None:
            if done.wait(delay):
                return
            frame = 0
            while not done.is_set():
                self.err.write(f"\r{_FRAMES[frame % len(_FRAMES)]} {text}")
                self.err.flush()
                frame += 1
                done.wait(0.1)
            self.err.write("\r" + " " * (len(text) + 2) + "\r")
            self.err.flush()

        spinner = threading.Thread(target=spin, name="progress", daemon=True)
        spinner.start()
        try:
            yield
        finally:
            done.set()
            spinner.join(1)
