"""Exec: run one command in a sandbox, stream its output, kill its tree on timeout.

The command runs with a random marker in its environment
(``LONGSHORE_EXEC_ID``). Every process it starts inherits the marker, even
one that double-forks into a new session, so on timeout (or when the caller
goes away) a second exec, run as the same user, finds every process carrying
the marker through ``/proc/*/environ`` and SIGKILLs it and its process group.
Env values go to the engine through the exec API's ``environment`` field,
never through an argv; the killer's argv carries only the marker.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import docker
from docker.utils.socket import frames_iter

from services.runtime.errors import InvalidArgument
from services.sandbox.docker_client import engine_call
from services.sandbox.metrics import SandboxMetrics
from services.sandbox.model import ExecCommand, ExecExit, OutputChunk, StreamKind

log = logging.getLogger(__name__)

MARKER_VAR = "LONGSHORE_EXEC_ID"
#: Seconds the killer gets before the output stream is cut from our side.
KILL_GRACE_SECONDS = 5.0
_SIGNAL_BASE = 128
_MAX_SIGNAL = 64

# Runs inside the sandbox as the command's user. $1 is the marker (not a
# secret). Repeats a few times so a process forked mid-sweep is caught too.
KILL_SCRIPT = r"""
m="LONGSHORE_EXEC_ID=$1"; n=0
while [ $n -lt 5 ]; do
  hit=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    if tr '\000' '\n' < "$d/environ" 2>/dev/null | grep -qx "$m"; then
      kill -KILL -- "-$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; hit=1
    fi
  done
  [ -z "$hit" ] && break
  n=$((n+1))
done
"""


def signal_of(exit_code: int) -> int:
    """The signal a ``128+n`` exit code reports, else 0."""
    if _SIGNAL_BASE < exit_code <= _SIGNAL_BASE + _MAX_SIGNAL:
        return exit_code - _SIGNAL_BASE
    return 0


def validate(command: ExecCommand) -> None:
    """Checks an exec request.

    Raises:
        InvalidArgument: Empty argv, negative timeout or cap, or a bad env name.
    """
    if not command.argv or not command.argv[0]:
        raise InvalidArgument("argv: required")
    if command.timeout_seconds < 0:
        raise InvalidArgument("timeout: must not be negative")
    if command.max_output_bytes < 0:
        raise InvalidArgument("max_output_bytes: must not be negative")
    for name in command.env:
        if not name or "=" in name or "\0" in name:
            raise InvalidArgument(f"env: invalid variable name {name!r}")
        if name == MARKER_VAR:
            raise InvalidArgument(f"env: {MARKER_VAR} is reserved")


class ExecRun:
    """One running command; iterate it for output chunks and then one :class:`ExecExit`."""

    def __init__(
        self,
        api: docker.APIClient,
        container_id: str,
        command: ExecCommand,
        *,
        timeout: float,
        max_output: int,
        metrics: SandboxMetrics,
    ) -> None:
        self._api = api
        self._cid = container_id
        self._cmd = command
        self._timeout = timeout
        self._max_output = max_output
        self._metrics = metrics
        self._marker = secrets.token_hex(12)
        self._timed_out = threading.Event()
        self._finished = threading.Event()
        self._sock: Any = None
        self._close_lock = threading.Lock()

    def events(self) -> Iterator[OutputChunk | ExecExit]:
        """Starts the command and yields its output as it arrives, then the exit.

        Raises:
            NotFound: The sandbox does not exist.
            FailedPrecondition: The sandbox is not running.
            Unavailable: The engine is unreachable.
        """
        env: dict[str, str] = dict(self._cmd.env)
        env[MARKER_VAR] = self._marker
        with engine_call("exec.create", resource=f"sandbox {self._cid!r}", sandbox_id=self._cid):
            exec_id = self._api.exec_create(
                self._cid,
                list(self._cmd.argv),
                stdout=True,
                stderr=True,
                stdin=bool(self._cmd.stdin),
                environment=env,
                workdir=self._cmd.workdir or None,
                user=self._cmd.user,
            )["Id"]
        started = time.monotonic()
        with engine_call("exec.start", resource=f"sandbox {self._cid!r}", sandbox_id=self._cid):
            self._sock = self._api.exec_start(exec_id, socket=True)
        timer = threading.Timer(self._timeout, self._on_timeout)
        timer.daemon = True
        timer.start()
        if self._cmd.stdin:
            threading.Thread(target=self._feed_stdin, daemon=True).start()
        produced = 0
        truncated = False
        try:
            for stream_id, frame in frames_iter(self._sock, tty=False):
                if not frame:
                    continue
                room = self._max_output - produced
                produced += len(frame)
                if room <= 0:
                    truncated = True
                    continue
                if len(frame) > room:
                    truncated = True
                kind = StreamKind.STDERR if stream_id == 2 else StreamKind.STDOUT
                yield OutputChunk(kind, bytes(frame[:room]))
            self._finished.set()
        finally:
            timer.cancel()
            if not self._finished.is_set():
                # The caller went away mid-stream: do not leave the command running.
                self._kill_tree()
            self._close()
        duration = time.monotonic() - started
        exit_code = self._exit_code(exec_id)
        timed_out = self._timed_out.is_set()
        signal = 9 if timed_out else signal_of(exit_code)
        if timed_out:
            exit_code = -1
        self._metrics.exec(timed_out=timed_out)
        yield ExecExit(exit_code, signal, timed_out, truncated, duration, produced)

    def cancel(self) -> None:
        """Kills the command's process tree and unblocks the reader; safe from any thread.

        A cancelled call may be waiting on a command that prints nothing, so
        the reader is blocked on the socket: closing it is what wakes it.
        Does nothing once the command has finished.
        """
        if self._finished.is_set():
            return
        log.info(
            "exec cancelled by the caller; killing its process tree",
            extra={"sandbox_id": self._cid},
        )
        self._kill_tree()
        self._close()

    def _feed_stdin(self) -> None:
        sock = self._sock
        if sock is None:  # already closed by a timeout or a cancel
            return
        raw = getattr(sock, "_sock", None) or sock
        try:
            raw.sendall(self._cmd.stdin)
            raw.shutdown(socket.SHUT_WR)
        except OSError as exc:  # the command exited before reading everything
            log.debug("stdin write stopped", extra={"error": str(exc)})

    def _exit_code(self, exec_id: str) -> int:
        # The stream ends when the process exits; the engine records the code
        # a moment later at most, so a few short retries cover the gap.
        for attempt in range(50):
            with engine_call("exec.inspect", sandbox_id=self._cid):
                info = self._api.exec_inspect(exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            time.sleep(0.002 * (attempt + 1))
        return -1

    def _on_timeout(self) -> None:
        self._timed_out.set()
        log.info(
            "exec timed out; killing its process tree",
            extra={"sandbox_id": self._cid, "timeout_seconds": self._timeout},
        )
        self._kill_tree()
        if not self._finished.wait(KILL_GRACE_SECONDS):
            self._close()

    def _kill_tree(self) -> None:
        try:
            with engine_call("exec.kill_tree", sandbox_id=self._cid):
                kill_id = self._api.exec_create(
                    self._cid,
                    ["sh", "-c", KILL_SCRIPT, "sh", self._marker],
                    stdout=True,
                    stderr=True,
                    user=self._cmd.user,
                )["Id"]
                self._api.exec_start(kill_id)
        except Exception as exc:  # best effort: the socket is cut regardless
            log.warning(
                "killing exec tree failed", extra={"sandbox_id": self._cid, "error": str(exc)}
            )

    def _close(self) -> None:
        # Called from the reader, the timeout timer and a cancel callback:
        # whoever comes first closes the socket, the others find nothing to do.
        with self._close_lock:
            sock, self._sock = self._sock, None
        if sock is None:
            return
        raw = getattr(sock, "_sock", None) or sock
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


def env_names(env: Mapping[str, str]) -> list[str]:
    """Names only, for logs and spans."""
    return sorted(env)
