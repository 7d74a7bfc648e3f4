"""What a process is, as the domain keeps it and as the contract shows it.

:class:`ProcessConfig` is a checked request (see :mod:`.checks`);
:class:`ProcessRecord` is a snapshot of one process, taken under its lock, so
a response never shows a half-updated process. The proto conversions live
here, beside the records they convert.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from longshore.sandbox.v1 import process_pb2, sandbox_pb2

from services.sandbox.model import OutputChunk, StreamKind


@dataclass(frozen=True)
class PtySize:
    """A terminal's size in character cells."""

    rows: int
    columns: int


@dataclass(frozen=True)
class ProcessConfig:
    """What process to start, after :func:`.checks.config_from_proto`."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    #: "" = the sandbox's own user.
    user: str = ""
    #: None = plain pipes.
    pty: PtySize | None = None
    tag: str = ""
    #: 0 = no limit.
    timeout_seconds: float = 0.0
    #: Keep stdin open for input.
    stdin: bool = False


@dataclass(frozen=True)
class ProcessEnd:
    """How a process ended."""

    exit_code: int
    signal: int
    timed_out: bool
    duration_seconds: float
    #: Why the manager ended it, when it did ("" otherwise).
    reason: str = ""


@dataclass(frozen=True)
class ProcessRecord:
    """One process at one moment."""

    process_id: str
    sandbox_id: str
    pid: int
    tag: str
    argv: tuple[str, ...]
    pty: PtySize | None
    start_time: datetime
    end: ProcessEnd | None
    output_bytes: int
    stdin_open: bool

    @property
    def running(self) -> bool:
        """Whether it has not ended yet."""
        return self.end is None


@dataclass(frozen=True)
class Skipped:
    """Output up to ``offset`` left the buffer before a reader got to it."""

    offset: int


@dataclass(frozen=True)
class Piece:
    """A piece of output at its offset in the process's whole output."""

    offset: int
    chunk: OutputChunk


_STREAMS = {
    StreamKind.STDOUT: sandbox_pb2.OUTPUT_STREAM_STDOUT,
    StreamKind.STDERR: sandbox_pb2.OUTPUT_STREAM_STDERR,
    StreamKind.PTY: sandbox_pb2.OUTPUT_STREAM_PTY,
}


def end_to_proto(end: ProcessEnd) -> process_pb2.ProcessExit:
    """The proto of how a process ended."""
    message = process_pb2.ProcessExit(
        exit_code=end.exit_code, signal=end.signal, timed_out=end.timed_out, reason=end.reason
    )
    message.duration.FromNanoseconds(int(end.duration_seconds * 1e9))
    return message


def record_to_proto(record: ProcessRecord) -> process_pb2.Process:
    """The proto of a process snapshot."""
    message = process_pb2.Process(
        process_id=record.process_id,
        sandbox_id=record.sandbox_id,
        pid=record.pid,
        tag=record.tag,
        argv=list(record.argv),
        state=process_pb2.PROCESS_STATE_RUNNING
        if record.running
        else process_pb2.PROCESS_STATE_EXITED,
        output_bytes=record.output_bytes,
        stdin_open=record.stdin_open,
    )
    if record.pty is not None:
        message.pty.rows = record.pty.rows
        message.pty.columns = record.pty.columns
    message.start_time.FromDatetime(record.start_time)
    if record.end is not None:
        message.exit.CopyFrom(end_to_proto(record.end))
    return message


def piece_to_proto(piece: Piece) -> process_pb2.ProcessEvent:
    """The event of a piece of output."""
    return process_pb2.ProcessEvent(
        output=process_pb2.ProcessOutput(
            chunk=sandbox_pb2.OutputChunk(
                stream=_STREAMS[piece.chunk.stream], data=piece.chunk.data
            ),
            offset=piece.offset,
        )
    )
