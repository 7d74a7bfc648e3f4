"""Exec: run one command in a sandbox, stream its output, stop its whole tree.

The command runs with a marker in its environment
(``LONGSHORE_EXEC_ID=<owner>~<random>``, see :mod:`.owners`). Every process it
starts inherits the marker, even one that double-forks into a new session.
To stop the command (timeout, cancel, or a leftover of a dead manager) a
second exec, run as the same user, **freezes first, then kills**: it sends
SIGSTOP to every process whose ``/proc/<pid>/environ`` holds the marker and
repeats the sweep until one finds no new process (a stopped process cannot
fork, so the set is closed), then SIGKILLs them all. Killing in ``/proc``
order instead would let a parent shell, whose child just died, run its next
step.

The killer reads ``environ`` with the shell's ``read -d ''`` builtin when the
image's shell has it (busybox ash, bash), so it forks nothing but itself;
other shells fall back to ``tr | grep``. When the killer cannot run at all
(the command holds every pid of the sandbox's pids limit, so the engine
cannot start the exec) the manager stops and restarts the container: its
name, labels and mounts stay, every process in it is gone, and the exec's
output ends with a note saying so. Either way the Exec stream ends with an
:class:`ExecExit` (``timed_out`` for a timeout).

What the marker cannot see is out of reach: a process that clears its
environment (``env -i``) or switches to another user escapes the sweep (the
killer runs as the command's user and reads ``environ`` with that user's
rights); such a process ends with the sandbox.

Env values go to the engine through the exec API's ``environment`` field,
never through an argv; the killer's argv carries only the marker.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import docker
import docker.errors
import requests
from docker.utils.socket import frames_iter

from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    OutOfRange,
    ServiceError,
    Unavailable,
)
from services.sandbox.docker_client import engine_call
from services.sandbox.metrics import SandboxMetrics
from services.sandbox.model import ExecCommand, ExecExit, OutputChunk, StreamKind
from services.sandbox.owners import MARKER_SEPARATOR

log = logging.getLogger(__name__)

MARKER_VAR = "LONGSHORE_EXEC_ID"
#: Seconds the killer gets before the output stream is cut from our side.
KILL_GRACE_SECONDS = 5.0
#: Longest timeout an Exec may ask for (7 days).
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
#: Largest output cap an Exec may ask for.
MAX_OUTPUT_BYTES = 1024 * 1024 * 1024
#: Times an exec is created again after the engine said its sandbox is paused.
PAUSED_RETRIES = 5
_DONE = "longshore-kill-done"
_SIGNAL_BASE = 128
_MAX_SIGNAL = 64

# Runs inside the sandbox. $1 is the mode: "kill" stops exactly the marker
# value $2 (freeze, then kill), "list" prints every marker value it can read.
# The last line is the sentinel, so a killer that could not finish is told
# apart from one that found nothing.
KILL_SCRIPT = r"""
mode=$1; m="LONGSHORE_EXEC_ID=$2"; broke=
nul=; read -r -d '' _ < /proc/$$/environ 2>/dev/null && nul=1
has() {
  if [ -n "$nul" ]; then
    while IFS= read -r -d '' v; do [ "$v" = "$m" ] && return 0; done < "$1/environ"
    return 1
  fi
  tr '\000' '\n' < "$1/environ" | grep -qxF -e "$m"
  rc=$?; [ $rc -gt 1 ] && broke=1
  return $rc
} 2>/dev/null
if [ "$mode" = list ]; then
  for d in /proc/[0-9]*; do
    [ "${d#/proc/}" = "$$" ] && continue
    if [ -n "$nul" ]; then
      while IFS= read -r -d '' v; do
        case "$v" in LONGSHORE_EXEC_ID=*) echo "$v";; esac
      done < "$d/environ" 2>/dev/null
    else
      tr '\000' '\n' < "$d/environ" 2>/dev/null | grep '^LONGSHORE_EXEC_ID='
    fi
  done
  echo longshore-kill-done
  exit 0
fi
frozen=" "; n=0; round=0
while [ $round -lt 200 ]; do
  new=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    case "$frozen" in *" $p "*) continue;; esac
    if has "$d"; then kill -STOP "$p" 2>/dev/null; frozen="$frozen$p "; n=$((n+1)); new=1; fi
  done
  [ -z "$new" ] && break
  round=$((round+1))
done
for p in $frozen; do kill -KILL "$p" 2>/dev/null; done
[ -z "$broke" ] && echo "longshore-kill-done $n"
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
        OutOfRange: A timeout or output cap past its maximum.
    """
    if not command.argv or not command.argv[0]:
        raise InvalidArgument("argv: required")
    if not math.isfinite(command.timeout_seconds) or command.timeout_seconds < 0:
        raise InvalidArgument("timeout: must not be negative")
    if command.timeout_seconds > MAX_TIMEOUT_SECONDS:
        raise OutOfRange(f"timeout: at most {MAX_TIMEOUT_SECONDS} s")
    if command.max_output_bytes < 0:
        raise InvalidArgument("max_output_bytes: must not be negative")
    if command.max_output_bytes > MAX_OUTPUT_BYTES:
        raise OutOfRange(f"max_output_bytes: at most {MAX_OUTPUT_BYTES}")
    for name in command.env:
        if not name or "=" in name or "\0" in name:
            raise InvalidArgument(f"env: invalid variable name {name[:100]!r}")
        if name == MARKER_VAR:
            raise InvalidArgument(f"env: {MARKER_VAR} is reserved")


def new_marker(owner: str) -> str:
    """A fresh marker value for one exec of the manager ``owner``."""
    return f"{owner}{MARKER_SEPARATOR}{secrets.token_hex(12)}"


def run_killer(
    api: docker.APIClient, cid: str, args: list[str], user: str, *, script: str = KILL_SCRIPT
) -> str | None:
    """Runs the killer script in a sandbox; its output, or None when it could not finish.

    None means the engine could not start the exec (typically every pid of
    the sandbox's limit is taken) or the script died before its sentinel.
    ``script`` is another killer with the same sentinel (a session's, which
    also knows its shell: :mod:`.sessions.killer`).
    """
    try:
        with engine_call("exec.kill_tree", sandbox_id=cid):
            kill_id = api.exec_create(
                cid,
                ["sh", "-c", script, "sh", *args],
                stdout=True,
                stderr=True,
                user=user,
            )["Id"]
            raw = api.exec_start(kill_id)
    except ServiceError as exc:
        log.warning("killer exec failed", extra={"sandbox_id": cid, "error": exc.message})
        return None
    out = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if _DONE not in out:
        log.warning("killer did not finish", extra={"sandbox_id": cid, "output": out[-200:]})
        return None
    return out


def list_markers(api: docker.APIClient, cid: str, user: str) -> list[str] | None:
    """Every exec marker value readable as ``user`` in a sandbox (None: killer failed)."""
    out = run_killer(api, cid, ["list", ""], user)
    if out is None:
        return None
    prefix = f"{MARKER_VAR}="
    return sorted({ln[len(prefix) :] for ln in out.splitlines() if ln.startswith(prefix)})


class ExecRun:
    """One running command; iterate it for output chunks and then one :class:`ExecExit`.

    Args:
        api: The engine's low-level client.
        container_id: Full id of the sandbox.
        command: What to run.
        timeout: Seconds before the command is stopped.
        max_output: Output bytes passed on; more are counted and dropped.
        metrics: Where exec outcomes are counted.
        owner: This manager's owner id, the first part of the marker.
        restart: Stops and restarts the sandbox (given the reason) when the
            killer cannot run in it.
        resume: Resumes the sandbox if it is paused, before a killer runs.
        on_paused: Resumes the sandbox whatever the manager believed, when the
            engine refuses the command because the sandbox is paused; the
            command is then created once more.
    """

    def __init__(
        self,
        api: docker.APIClient,
        container_id: str,
        command: ExecCommand,
        *,
        timeout: float,
        max_output: int,
        metrics: SandboxMetrics,
        owner: str = "",
        restart: Callable[[str], None] | None = None,
        resume: Callable[[], object] | None = None,
        on_paused: Callable[[], object] | None = None,
    ) -> None:
        self._api = api
        self._resume = resume
        self._on_paused = on_paused
        self._cid = container_id
        self._cmd = command
        self._timeout = timeout
        self._max_output = max_output
        self._metrics = metrics
        self._restart = restart
        self.marker = new_marker(owner)
        self._timed_out = threading.Event()
        self._finished = threading.Event()
        self._stopping = threading.Event()
        self._sock: Any = None
        self._close_lock = threading.Lock()
        self._kill_lock = threading.Lock()
        self._notes: list[str] = []
        self._stopped = False

    def events(self) -> Iterator[OutputChunk | ExecExit]:
        """Starts the command and yields its output as it arrives, then the exit.

        Raises:
            NotFound: The sandbox does not exist.
            FailedPrecondition: The sandbox is not running, or the engine
                could not start the command.
            Unavailable: The engine is unreachable.
        """
        env: dict[str, str] = dict(self._cmd.env)
        env[MARKER_VAR] = self.marker
        exec_id = self._create_resuming(env)
        started = time.monotonic()
        with engine_call("exec.start", resource=f"sandbox {self._cid!r}", sandbox_id=self._cid):
            self._sock = self._api.exec_start(exec_id, socket=True)
        if self._stopping.is_set():
            # A cancel came while the command was being started: its killer
            # ran before the command existed and found no socket to close.
            # Stop it now, before the first read would wait on it forever.
            with self._kill_lock:
                self._stopped = False
            self.stop()
            self._close()
        timer = threading.Timer(self._timeout, self._on_timeout)
        timer.daemon = True
        timer.start()
        if self._cmd.stdin:
            threading.Thread(target=self._feed_stdin, daemon=True).start()
        produced = 0
        truncated = False
        try:
            for stream_id, frame in self._frames():
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
                self.stop()
            self._close()
        # A stop may still be restarting the sandbox (which is what ended the
        # stream): wait for it, so its note is part of this result.
        with self._kill_lock:
            notes = list(self._notes)
        for note in notes:
            yield OutputChunk(StreamKind.STDERR, f"longshore: {note}\n".encode())
        duration = time.monotonic() - started
        exit_code = self._exit_code(exec_id)
        timed_out = self._timed_out.is_set()
        signal = 9 if timed_out else signal_of(exit_code)
        if timed_out:
            exit_code = -1
        self._metrics.exec(timed_out=timed_out, duration_seconds=duration)
        yield ExecExit(exit_code, signal, timed_out, truncated, duration, produced)

    def _create_resuming(self, env: Mapping[str, str]) -> str:
        for attempt in range(PAUSED_RETRIES):
            try:
                return self._create(env)
            except FailedPrecondition as exc:
                # The engine says paused although the manager believes
                # otherwise: paused by another process, or the engine's late
                # "paused" event (it applies its runtime's events
                # asynchronously) arriving after a quick pause and resume,
                # which holds until the matching "resumed" event lands.
                # Resume for real and retry, backing off, a few times.
                if self._on_paused is None or "is paused" not in exc.message:
                    raise
                if attempt == PAUSED_RETRIES - 1:
                    raise
                self._on_paused()
                time.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    def _create(self, env: Mapping[str, str]) -> str:
        with engine_call("exec.create", resource=f"sandbox {self._cid!r}", sandbox_id=self._cid):
            return str(
                self._api.exec_create(
                    self._cid,
                    list(self._cmd.argv),
                    stdout=True,
                    stderr=True,
                    stdin=bool(self._cmd.stdin),
                    environment=dict(env),
                    workdir=self._cmd.workdir or None,
                    user=self._cmd.user,
                )["Id"]
            )

    def _frames(self) -> Iterator[tuple[int, bytes]]:
        """The output frames; ends quietly when we closed the socket ourselves."""
        sock = self._sock
        if sock is None:  # stopped before the first read
            return
        try:
            yield from frames_iter(sock, tty=False)
        except (OSError, ValueError, requests.exceptions.RequestException) as exc:
            # ValueError is a read on a socket file a timeout or cancel closed.
            if self._stopping.is_set() or self._sock is None:
                return
            raise Unavailable(
                f"docker engine connection lost during exec in sandbox {self._cid!r}: {exc}"
            ) from exc

    def cancel(self) -> None:
        """Stops the command's process tree and unblocks the reader; safe from any thread.

        A cancelled call may be waiting on a command that prints nothing, so
        the reader is blocked on the socket: closing it is what wakes it.
        Does nothing once the command has finished.
        """
        if self._finished.is_set():
            return
        log.info(
            "exec cancelled by the caller; stopping its process tree",
            extra={"sandbox_id": self._cid},
        )
        self.stop()
        self._close()

    def stop(self) -> None:
        """Freezes and kills every process of the command; restarts the sandbox if that fails."""
        self._stopping.set()
        # One stop at a time: a timeout and a cancel racing would otherwise
        # both restart the sandbox; once one stop succeeded the rest skip.
        with self._kill_lock:
            if self._finished.is_set() or self._stopped:
                return
            self._stopped = True
            if self._resume is not None:
                try:
                    self._resume()
                except ServiceError as exc:  # the killer's failure decides what follows
                    log.warning("resume before kill failed", extra={"error": exc.message})
            out = run_killer(self._api, self._cid, ["kill", self.marker], self._cmd.user)
            if out is not None or self._restart is None:
                return
            reason = "the command could not be stopped in place (no process can start"
            reason += " in the sandbox, e.g. its pids limit is reached); the sandbox was restarted"
            try:
                self._restart(reason)
            except ServiceError as exc:
                log.error(
                    "restarting the sandbox to stop an exec failed",
                    extra={"sandbox_id": self._cid, "error": exc.message},
                )
                return
            self._notes.append(reason)

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
            try:
                with engine_call("exec.inspect", sandbox_id=self._cid):
                    info = self._api.exec_inspect(exec_id)
            except ServiceError as exc:
                if self._stopping.is_set():
                    return -1  # e.g. the exec went with a restarted sandbox
                raise Unavailable(
                    f"docker engine lost the exec's exit in sandbox {self._cid!r}: "
                    f"{exc.message[:200]}"
                ) from exc
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            time.sleep(0.002 * (attempt + 1))
        return -1

    def _on_timeout(self) -> None:
        self._timed_out.set()
        log.info(
            "exec timed out; stopping its process tree",
            extra={"sandbox_id": self._cid, "timeout_seconds": self._timeout},
        )
        self.stop()
        if not self._finished.wait(KILL_GRACE_SECONDS):
            self._close()

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
