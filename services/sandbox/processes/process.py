"""One process: a docker exec with its socket attached, read by a thread of its own.

The exec runs a tiny wrapper, ``sh -c 'echo "$$"; exec "$@"'``: the first
line of its stdout is the process's pid in the sandbox (the manager strips it
from the output), then the shell becomes the caller's command, same pid. The
engine starts every exec in a session and process group of its own (runc
calls ``setsid``), so that pid is also the group id and a signal sent to
``-pid`` reaches the whole group. With a PTY the wrapper first sets the
terminal's size with ``stty``, so the command never sees a 0x0 terminal.
The image needs a ``sh`` (any image Longshore runs commands in has one).

Like Exec (:mod:`..execution`), the process carries an exec marker in its
environment: SIGKILL, a timeout or a caller that went away end its whole tree
with the freeze-then-kill sweep, children that left the group included, and
a manager that died leaves no process behind (the leftover sweep finds the
dead owner's marker).

Stdin goes through the socket (``shutdown(SHUT_WR)`` closes it) from one
writer thread per process, so writes keep their order and a process that
never reads blocks only that thread; a caller's write waits on its future.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from datetime import datetime
from typing import Any

import docker
import requests
from docker.utils.socket import frames_iter

from services.runtime.errors import FailedPrecondition, ResourceExhausted, ServiceError
from services.sandbox.docker_client import engine_call
from services.sandbox.execution import MARKER_VAR, new_marker, run_killer, signal_of
from services.sandbox.model import StreamKind
from services.sandbox.processes.buffer import OutputBuffer
from services.sandbox.processes.records import ProcessConfig, ProcessEnd, ProcessRecord, PtySize

log = logging.getLogger(__name__)

WRAPPER = 'echo "$$"; exec "$@"'
PTY_WRAPPER = 'stty rows "$1" cols "$2" 2>/dev/null; shift 2; echo "$$"; exec "$@"'
#: argv[0] of the wrapper shell (what ``ps`` shows until the exec).
WRAPPER_NAME = "longshore-process"
#: Longest pid line; anything longer is output of a shell that did not run the wrapper.
MAX_PID_LINE = 32
#: How long a start waits for the pid line.
PID_WAIT_SECONDS = 10.0
#: Stdin bytes accepted but not yet written to a process (RESOURCE_EXHAUSTED beyond).
MAX_PENDING_INPUT_BYTES = 8 * 1024 * 1024
#: Exit-code polls after the output ended (the engine records the code a moment
#: later): 0.5 ms more between each, about 2.5 s in all.
EXIT_POLLS = 100
EXIT_POLL_STEP_SECONDS = 0.0005
#: Looks at a sandbox that may be stopping under a killed process, and the pause between.
STOP_POLLS = 40
STOP_POLL_SECONDS = 0.05
SIGKILL = 9
SANDBOX_STOPPED = "the sandbox stopped"


class ManagedProcess:
    """One process in a sandbox, from start to exit.

    Args:
        api: The engine's low-level client.
        sandbox_id: Full id of the sandbox.
        process_id: The manager's id for it.
        config: What to run (checked).
        buffer_bytes: Output bytes kept for readers.
        owner: This manager's owner id (the exec marker's first part).
        now: The wall clock.
        on_exit: Called once, from the reader thread, after the process ended.
        resume: Resumes the sandbox if it is paused, before a signal or a kill
            (both are execs, which a paused sandbox refuses).
    """

    def __init__(
        self,
        api: docker.APIClient,
        *,
        sandbox_id: str,
        process_id: str,
        config: ProcessConfig,
        buffer_bytes: int,
        owner: str,
        now: Callable[[], datetime],
        on_exit: Callable[[ManagedProcess], None],
        resume: Callable[[], object] = lambda: None,
    ) -> None:
        self._api = api
        self.sandbox_id = sandbox_id
        self.process_id = process_id
        self.config = config
        self.tag = config.tag
        self.buffer = OutputBuffer(buffer_bytes)
        self.marker = new_marker(owner)
        self.start_time = now()
        self._on_exit = on_exit
        self._resume = resume
        # Guards the fields below: the reader thread ends the process while
        # handlers (pool threads and the loop) read and signal it.
        self._lock = threading.Lock()
        self._pid = 0
        self._pid_known = threading.Event()
        self._end: ProcessEnd | None = None
        self._stdin_open = config.stdin
        self._pty = config.pty
        self._reason = ""
        self._signalled: tuple[int, str] | None = None
        self._timed_out = False
        self._pending_input = 0
        self._exec_id = ""
        self._sock: Any = None
        self._raw: socket.socket | None = None
        self._started = time.monotonic()
        self._timer: threading.Timer | None = None
        # One writer thread: stdin writes keep their order.
        self._writer = futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{process_id}-stdin"
        )

    # ---- start and end -------------------------------------------------------------

    def start(self) -> None:
        """Creates and starts the exec, starts the reader, waits (bounded) for the pid.

        Raises:
            NotFound: The sandbox is gone.
            FailedPrecondition: The sandbox is not running, or the engine
                refused the exec (e.g. an unknown user).
            Unavailable: The engine is unreachable.
        """
        config = self.config
        env = dict(config.env)
        if config.pty is not None:
            env.setdefault("TERM", "xterm")
            sizes = [str(config.pty.rows), str(config.pty.columns)]
            argv = ["sh", "-c", PTY_WRAPPER, WRAPPER_NAME, *sizes, *config.argv]
        else:
            argv = ["sh", "-c", WRAPPER, WRAPPER_NAME, *config.argv]
        self._open(argv, env, workdir=config.workdir, user=config.user)
        self._arm_timeout()
        self._pid_known.wait(PID_WAIT_SECONDS)

    def _open(self, argv: list[str], env: dict[str, str], *, workdir: str, user: str) -> None:
        """Creates and starts the exec of ``argv`` (marked), then its reader thread."""
        config = self.config
        env = {**env, MARKER_VAR: self.marker}
        tty = config.pty is not None
        where = f"sandbox {self.sandbox_id[:12]!r}"
        with engine_call("exec.create", resource=where, sandbox_id=self.sandbox_id):
            self._exec_id = str(
                self._api.exec_create(
                    self.sandbox_id,
                    argv,
                    stdout=True,
                    stderr=True,
                    stdin=config.stdin,
                    tty=tty,
                    environment=env,
                    workdir=workdir or None,
                    user=user,
                )["Id"]
            )
        with engine_call("exec.start", resource=where, sandbox_id=self.sandbox_id):
            self._sock = self._api.exec_start(self._exec_id, socket=True, tty=tty)
        self._raw = getattr(self._sock, "_sock", None) or self._sock
        self._started = time.monotonic()
        threading.Thread(target=self._read, name=f"{self.process_id}-output", daemon=True).start()

    def _arm_timeout(self) -> None:
        """Starts the timeout's clock (from now), if the config sets one."""
        if self.config.timeout_seconds > 0:
            self._timer = threading.Timer(self.config.timeout_seconds, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()

    def _read(self) -> None:
        """The reader thread: output into the buffer, then the exit."""
        tty = self.config.pty is not None
        head = bytearray()
        try:
            for stream_id, frame in frames_iter(self._sock, tty=tty):
                if not frame:
                    continue
                data = bytes(frame)
                if not self._pid_known.is_set() and stream_id == 1:
                    head += data
                    newline = head.find(b"\n")
                    if newline < 0 and len(head) <= MAX_PID_LINE:
                        continue
                    line = head[:newline] if newline >= 0 else b""
                    data = bytes(head[newline + 1 :] if newline >= 0 else head)
                    head.clear()
                    self._set_pid(bytes(line))
                kind = (
                    StreamKind.PTY
                    if tty
                    else StreamKind.STDERR
                    if stream_id == 2
                    else StreamKind.STDOUT
                )
                self.buffer.append(kind, data)
        except (OSError, ValueError, requests.exceptions.RequestException) as exc:
            # A closed socket (our kill, the sandbox going away) ends the read.
            log.debug(
                "process output ended", extra={"process_id": self.process_id, "error": str(exc)}
            )
        finally:
            if head:
                self.buffer.append(StreamKind.PTY if tty else StreamKind.STDOUT, bytes(head))
            self._pid_known.set()
            self._finish()

    def _set_pid(self, line: bytes) -> None:
        text = line.strip().decode("ascii", "replace")
        with self._lock:
            self._pid = int(text) if text.isdigit() and len(text) < 10 else 0
        self._pid_known.set()

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        duration = time.monotonic() - self._started
        code = self._exit_code()
        with self._lock:
            reason, timed_out, signalled = self._reason, self._timed_out, self._signalled
        signal = 0
        if code is None:
            code, reason = -1, reason or SANDBOX_STOPPED
        else:
            signal = signal_of(code)
        if timed_out:
            signal = SIGKILL
        if signal:
            code = -1
            if not reason and signalled is not None and signalled[0] == signal:
                reason = signalled[1]
            if not reason and not self._sandbox_running():
                reason = SANDBOX_STOPPED
        end = ProcessEnd(code, signal, timed_out, duration, reason[:200])
        with self._lock:
            self._end = end
            self._stdin_open = False
        self._close_socket()
        self._writer.shutdown(wait=False)
        # The end is set before the buffer closes: a reader that sees the
        # close finds the exit.
        self.buffer.close()
        log.info(
            "process ended",
            extra={
                "process_id": self.process_id,
                "sandbox_id": self.sandbox_id,
                "exit_code": code,
                "signal": signal,
                "reason": reason,
            },
        )
        self._on_exit(self)

    def _exit_code(self) -> int | None:
        """The exec's exit code; None when the engine lost the exec (its sandbox went)."""
        for attempt in range(EXIT_POLLS):
            try:
                with engine_call("exec.inspect", sandbox_id=self.sandbox_id):
                    info = self._api.exec_inspect(self._exec_id)
            except ServiceError:
                return None
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            time.sleep(EXIT_POLL_STEP_SECONDS * (attempt + 1))
        return None

    def _sandbox_running(self) -> bool:
        """Whether the sandbox still runs, a moment after a signal nobody here sent.

        A stopping sandbox kills its processes before the engine marks it
        stopped, so a sandbox that still looks running is asked again a few
        times (about two seconds in all) before the signal is taken as the
        process's own business.
        """
        for _ in range(STOP_POLLS):
            try:
                with engine_call("containers.inspect", sandbox_id=self.sandbox_id):
                    state = self._api.inspect_container(self.sandbox_id).get("State") or {}
            except ServiceError:
                return False
            if not state.get("Running") or state.get("Restarting"):
                return False
            time.sleep(STOP_POLL_SECONDS)
        return True

    def _close_socket(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            raw, self._raw = self._raw, None
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # ---- what callers do -----------------------------------------------------------

    def snapshot(self) -> ProcessRecord:
        """The process as it is now."""
        with self._lock:
            return ProcessRecord(
                process_id=self.process_id,
                sandbox_id=self.sandbox_id,
                pid=self._pid,
                tag=self.tag,
                argv=self.config.argv,
                pty=self._pty,
                start_time=self.start_time,
                end=self._end,
                output_bytes=self.buffer.end,
                stdin_open=self._stdin_open,
            )

    @property
    def running(self) -> bool:
        """Whether it has not ended."""
        with self._lock:
            return self._end is None

    @property
    def pid(self) -> int:
        """Its pid in the sandbox (0 while unknown)."""
        with self._lock:
            return self._pid

    def _require_running(self) -> None:
        if self._end is not None:
            raise FailedPrecondition(f"process {self.process_id}: exited")

    def write(self, data: bytes) -> futures.Future[None]:
        """Queues bytes for stdin; the future is done once they are written.

        Raises:
            FailedPrecondition: The process exited, or its stdin is closed.
            ResourceExhausted: 8 MiB already wait to be written.
        """
        with self._lock:
            self._require_running()
            if not self._stdin_open:
                raise FailedPrecondition(f"process {self.process_id}: stdin is closed")
            if self._pending_input + len(data) > MAX_PENDING_INPUT_BYTES:
                raise ResourceExhausted(
                    f"process {self.process_id}: {self._pending_input} bytes of stdin wait to "
                    f"be read already, at most {MAX_PENDING_INPUT_BYTES}"
                )
            self._pending_input += len(data)
            return self._writer.submit(self._send, data)

    def _send(self, data: bytes) -> None:
        try:
            raw = self._raw
            if raw is None:
                raise OSError("closed")
            raw.sendall(data)
        except OSError as exc:
            raise FailedPrecondition(
                f"process {self.process_id}: stdin no longer accepts input"
            ) from exc
        finally:
            with self._lock:
                self._pending_input -= len(data)

    def close_stdin(self) -> futures.Future[None]:
        """Closes stdin after what was written before; closing it twice is not an error.

        Raises:
            FailedPrecondition: The process exited.
        """
        with self._lock:
            self._require_running()
            if not self._stdin_open:
                done: futures.Future[None] = futures.Future()
                done.set_result(None)
                return done
            self._stdin_open = False
            return self._writer.submit(self._shutdown_stdin)

    def _shutdown_stdin(self) -> None:
        raw = self._raw
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_WR)

    def signal(self, signum: int, *, by: str) -> None:
        """Sends a signal to the process's group; SIGKILL ends its whole tree.

        Blocking (an exec of ``kill`` in the sandbox, as the process's user).

        Raises:
            FailedPrecondition: The process exited, its pid is unknown, or
                ``kill`` failed while it still runs.
        """
        if signum == SIGKILL:
            with self._lock:
                self._require_running()
            self.kill(f"killed by {by}")
            return
        with self._lock:
            self._require_running()
            pid = self._pid
            self._signalled = (signum, f"signal {signum} sent by {by}")
        if pid <= 0:
            raise FailedPrecondition(f"process {self.process_id}: its pid is unknown")
        self._resume()
        argv = ["sh", "-c", 'kill -"$1" -"$2"', "kill", str(signum), str(pid)]
        with engine_call("exec.signal", sandbox_id=self.sandbox_id):
            exec_id = self._api.exec_create(
                self.sandbox_id, argv, stdout=True, stderr=True, user=self.config.user
            )["Id"]
            out = self._api.exec_start(exec_id)
            code = self._api.exec_inspect(exec_id).get("ExitCode")
        if code not in (0, None) and self.running:
            text = out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)
            raise FailedPrecondition(
                f"process {self.process_id}: kill -{signum} failed: {text.strip()[:200]}"
            )

    def kill(self, reason: str) -> None:
        """Ends the process's whole tree (freeze, then kill); nothing once it ended."""
        with self._lock:
            if self._end is not None:
                return
            self._reason = self._reason or reason
        try:
            self._resume()
        except ServiceError as exc:  # the killer's own failure says what follows
            log.warning("resume before kill failed", extra={"error": exc.message})
        if run_killer(self._api, self.sandbox_id, ["kill", self.marker], self.config.user) is None:
            log.warning("process tree could not be killed", extra={"process_id": self.process_id})

    def resize(self, size: PtySize) -> None:
        """Resizes the PTY (blocking).

        Raises:
            FailedPrecondition: No PTY, or the process exited.
        """
        with self._lock:
            self._require_running()
            if self._pty is None:
                raise FailedPrecondition(f"process {self.process_id}: has no PTY")
        with engine_call("exec.resize", sandbox_id=self.sandbox_id):
            self._api.exec_resize(self._exec_id, height=size.rows, width=size.columns)
        with self._lock:
            self._pty = size

    def _on_timeout(self) -> None:
        with self._lock:
            if self._end is not None:
                return
            self._timed_out = True
        self.kill(f"timed out after {self.config.timeout_seconds:g} s")
