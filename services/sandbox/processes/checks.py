"""Checks of process requests: every field bounded, every refusal naming it.

Nothing here talks to the engine: a request is refused (INVALID_ARGUMENT or
OUT_OF_RANGE) before any side effect.
"""

from __future__ import annotations

import re

from longshore.sandbox.v1 import process_pb2

from services.runtime.errors import InvalidArgument, quote
from services.sandbox import convert
from services.sandbox.execution import MARKER_VAR, MAX_TIMEOUT_SECONDS
from services.sandbox.policy import check_env
from services.sandbox.processes.records import ProcessConfig, PtySize

#: Most argv entries, and bytes of argv in all.
MAX_ARGV_ENTRIES = 4096
MAX_ARGV_BYTES = 1024 * 1024
#: Largest stdin message (RunProcess) or SendProcessInput.
MAX_INPUT_BYTES = 1024 * 1024
MAX_WORKDIR_CHARS = 4096
MAX_USER_CHARS = 256
#: Longest process id a caller may pass (issued ids are 21 characters).
MAX_PROCESS_ID_CHARS = 64
MAX_SIGNAL = 64
MAX_PTY_CELLS = 1000
TAG = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


def config_from_proto(message: process_pb2.ProcessConfig, field: str = "config") -> ProcessConfig:
    """The checked domain config of a request's ``ProcessConfig``.

    Raises:
        InvalidArgument: Empty or over-long argv, NUL in it, bad env, workdir,
            user, tag or PTY size, a negative timeout.
        OutOfRange: A timeout over 7 days.
    """
    argv = tuple(message.argv)
    if not argv or not argv[0]:
        raise InvalidArgument(f"{field}.argv: required")
    if len(argv) > MAX_ARGV_ENTRIES:
        raise InvalidArgument(f"{field}.argv: at most {MAX_ARGV_ENTRIES} entries, got {len(argv)}")
    size = sum(len(a.encode("utf-8", "surrogatepass")) + 1 for a in argv)
    if size > MAX_ARGV_BYTES:
        raise InvalidArgument(f"{field}.argv: {size} bytes, at most {MAX_ARGV_BYTES}")
    if any("\0" in a for a in argv):
        raise InvalidArgument(f"{field}.argv: must not contain NUL")
    env = dict(message.env)
    check_env(env, f"{field}.env")
    if MARKER_VAR in env:
        raise InvalidArgument(f"{field}.env: {MARKER_VAR} is reserved")
    _check_text(f"{field}.workdir", message.workdir, MAX_WORKDIR_CHARS)
    _check_text(f"{field}.user", message.user, MAX_USER_CHARS)
    if message.tag and not TAG.match(message.tag):
        raise InvalidArgument(
            f"{field}.tag: {quote(message.tag)} is not [A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}"
        )
    # Range-checked on the raw fields: a Duration beyond timedelta's range
    # (seconds of -2^62, found by the fuzz test) must not overflow into INTERNAL.
    timeout = convert.duration_seconds(message.timeout, f"{field}.timeout", MAX_TIMEOUT_SECONDS)
    pty = pty_size(message.pty, f"{field}.pty") if message.HasField("pty") else None
    return ProcessConfig(
        argv=argv,
        env=env,
        workdir=message.workdir,
        user=message.user,
        pty=pty,
        tag=message.tag,
        timeout_seconds=timeout,
        stdin=message.stdin,
    )


def _check_text(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidArgument(f"{field}: at most {limit} characters, got {len(value)}")
    if "\0" in value:
        raise InvalidArgument(f"{field}: must not contain NUL")


def pty_size(message: process_pb2.PtySize, field: str) -> PtySize:
    """A checked terminal size.

    Raises:
        InvalidArgument: Rows or columns outside 1 to 1000.
    """
    for name, value in (("rows", message.rows), ("columns", message.columns)):
        if not 1 <= value <= MAX_PTY_CELLS:
            raise InvalidArgument(f"{field}.{name}: must be 1 to {MAX_PTY_CELLS}, got {value}")
    return PtySize(message.rows, message.columns)


def signal_number(value: int, field: str = "signal") -> int:
    """A checked signal number.

    Raises:
        InvalidArgument: Outside 1 to 64.
    """
    if not 1 <= value <= MAX_SIGNAL:
        raise InvalidArgument(f"{field}: must be 1 to {MAX_SIGNAL}, got {value}")
    return value


def input_data(data: bytes, field: str) -> bytes:
    """Checked stdin bytes.

    Raises:
        InvalidArgument: Over 1 MiB.
    """
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidArgument(f"{field}: {len(data)} bytes, at most {MAX_INPUT_BYTES} a message")
    return data


def from_offset(value: int) -> int:
    """A checked replay offset (the buffer decides what is past the end).

    Raises:
        InvalidArgument: Negative.
    """
    if value < 0:
        raise InvalidArgument(f"from_offset: must not be negative, got {value}")
    return value


Selector = tuple[str, str | int]


def selector(message: process_pb2.ProcessSelector, field: str = "process") -> Selector:
    """(kind, value) of a process selector: ``process_id``, ``pid`` or ``tag``.

    Raises:
        InvalidArgument: None set, or an empty or over-long value.
    """
    kind = message.WhichOneof("selector")
    if kind == "process_id":
        if not message.process_id:
            raise InvalidArgument(f"{field}.process_id: must not be empty")
        if len(message.process_id) > MAX_PROCESS_ID_CHARS:
            raise InvalidArgument(
                f"{field}.process_id: at most {MAX_PROCESS_ID_CHARS} characters, "
                f"got {len(message.process_id)}"
            )
        return kind, message.process_id
    if kind == "pid":
        if message.pid == 0:
            raise InvalidArgument(f"{field}.pid: must be positive")
        return kind, message.pid
    if kind == "tag":
        if not TAG.match(message.tag):
            raise InvalidArgument(f"{field}.tag: {quote(message.tag)} is not a valid tag")
        return kind, message.tag
    raise InvalidArgument(f"{field}: required (process_id, pid or tag)")
