"""A session: one shell, its state, one command at a time, and how it ends.

A reader thread per session reads everything the shell writes and hands it
to the running command (:mod:`.command`); output between commands (a
background process a command left) belongs to no command and is dropped.
When the stream ends, the shell is gone: the session is DEAD and says why.
A timeout or a cancel stops the command on a thread of its own
(:mod:`.killer`), so the reader keeps draining meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime

import docker

from services.runtime.errors import FailedPrecondition, ServiceError, Unavailable, quote
from services.sandbox.execution import new_marker
from services.sandbox.sessions import killer
from services.sandbox.sessions.command import CommandRun, Sink
from services.sandbox.sessions.deadlines import Deadlines
from services.sandbox.sessions.framing import MARKER_VAR, new_nonce, parse_ready, prelude, wrap
from services.sandbox.sessions.model import SessionCommand, SessionInfo, SessionState
from services.sandbox.sessions.shell import Shell

log = logging.getLogger(__name__)

#: Seconds a shell gets to print its ready line.
READY_TIMEOUT_SECONDS = 15.0
#: Bytes of a shell's first output read while waiting for its ready line.
READY_MAX_BYTES = 64 * 1024
#: Seconds a command waits for the last command's stop to end (its killer
#: sweeps in a few hundred ms; this bounds an engine that does not answer).
STOP_WAIT_SECONDS = 30.0
#: Longest end reason kept (the proto's bound).
MAX_REASON_CHARS = 200


class Session:
    """One shell session in a sandbox.

    Args:
        api: The engine's low-level client.
        cid: Full id of the sandbox.
        session_id: The session's id.
        shell: The shell program.
        env: Extra environment of the shell.
        workdir: Starting directory ("" = the sandbox's).
        idle_timeout: Seconds without a command before it is closed.
        owner: This manager's owner id (the first part of every marker).
        clock: Wall clock for the session's times.
        on_use: Called with True when a command starts, False when it ends
            (the manager counts the sandbox busy meanwhile).
        on_end: Called once when the session is DEAD or CLOSED.
        describe_death: The end reason of a shell that exited with a status
            (None: unknown), e.g. naming a sandbox that stopped.
        deadlines: Where command timeouts are scheduled.
    """

    def __init__(
        self,
        api: docker.APIClient,
        cid: str,
        session_id: str,
        *,
        shell: str,
        env: Mapping[str, str],
        workdir: str,
        idle_timeout: float,
        owner: str,
        clock: Callable[[], datetime],
        on_use: Callable[[bool], None],
        on_end: Callable[[Session], None],
        describe_death: Callable[[int | None], str],
        deadlines: Deadlines,
    ) -> None:
        self._api = api
        self.cid = cid
        self.session_id = session_id
        self.shell_path = shell
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._on_use = on_use
        self._on_end = on_end
        self._describe_death = describe_death
        self._deadlines = deadlines
        self.shell_marker = new_marker(owner)
        self._owner = owner
        self._shell = Shell(api, cid, shell, {**env, MARKER_VAR: self.shell_marker}, workdir)
        self._lock = threading.Lock()
        self._state = SessionState.READY
        self._run: CommandRun | None = None
        self._pid = 0
        self._commands = 0
        self._reason = ""
        #: A reason decided before the shell is ended (it then dies with this one).
        self._planned_reason = ""
        #: Clear while a stop's rounds run: its killer still sweeps the
        #: sandbox after the command has ended, so the next command waits.
        self._stopped = threading.Event()
        self._stopped.set()
        self.create_time = clock()
        self._last_used = self.create_time

    # ---- open ----------------------------------------------------------------------

    def open(self) -> None:
        """Starts the shell and waits for its ready line, then starts the reader.

        Raises:
            FailedPrecondition: The program is missing or is no working shell.
            NotFound, Unavailable: As the engine says.
        """
        self._shell.start()
        nonce = new_nonce()
        frames = self._shell.frames()
        # A shell that never answers (not a shell, or hung) must not hold the
        # caller: the timer closes the connection, which ends the read.
        timer = threading.Timer(READY_TIMEOUT_SECONDS, self._shell.close)
        timer.daemon = True
        timer.start()
        seen = b""
        pid = None
        try:
            self._shell.send(prelude(nonce))
            for stream, data in frames:
                seen = (seen + data)[-READY_MAX_BYTES:]
                if stream == 1 and nonce.encode() in seen:
                    line = seen[seen.index(nonce.encode()) :]
                    if b"\n" in line:
                        pid = parse_ready(line.split(b"\n", 1)[0], nonce)
                        break
        except ServiceError:
            pid = None
        finally:
            timer.cancel()
        if pid is None:
            self._shell.close()
            code = self._shell.exit_code()
            if code is None:
                # Still running (a program that ignores its input, e.g. sleep):
                # closing our side does not end it; its marker does.
                killer.end_shell(self._api, self.cid, shell_marker=self.shell_marker)
            said = seen.decode("utf-8", "replace").strip()[:200]
            raise FailedPrecondition(
                f"shell: {quote(self.shell_path)} did not start as a POSIX shell in sandbox "
                f"{self.cid[:12]!r} (exit {code if code is not None else 'unknown'})"
                + (f": {said}" if said else "")
            )
        self._pid = pid
        reader = threading.Thread(
            target=self._read, args=(frames,), daemon=True, name=f"session-{self.session_id}"
        )
        reader.start()

    # ---- commands ------------------------------------------------------------------

    def start(self, command: SessionCommand, sink: Sink, *, max_output: int) -> CommandRun:
        """Sends a command to the shell; its events go to ``sink``.

        The shell returns from a stopped command at the killer's first
        signal, while the killer still looks for the command's processes; a
        fork of the shell made by the next command would look like one of
        them. So a command sent then waits until that stop has ended.

        Raises:
            FailedPrecondition: A command is running, or the session ended.
            Unavailable: The shell's connection broke while sending, or the
                last command's stop did not end in time.
        """
        if not self._stopped.wait(STOP_WAIT_SECONDS):
            raise Unavailable(
                f"session {quote(self.session_id)}: the last command's stop has not ended "
                f"after {STOP_WAIT_SECONDS:.0f} s; retry"
            )
        with self._lock:
            if self._state is SessionState.BUSY:
                raise FailedPrecondition(
                    f"session {quote(self.session_id)} is busy: a command is running in it"
                )
            self._require_alive()
            run = CommandRun(
                command,
                marker=new_marker(self._owner),
                nonce=new_nonce(),
                sink=sink,
                max_output=max_output,
            )
            self._run = run
            self._state = SessionState.BUSY
        self._on_use(True)
        # The deadline stops the command, never the session; the reader
        # cancels it when the command ends first.
        run.timer = self._deadlines.after(
            command.timeout_seconds, lambda: self.stop(run, "timeout")
        )
        # If the send fails, the shell is gone: the reader sees its stream
        # end, makes the session DEAD and completes this run as session_ended.
        self._shell.send(
            wrap(command.source, marker=run.marker, shell_marker=self.shell_marker, nonce=run.nonce)
        )
        return run

    def stop(self, run: CommandRun, why: str) -> None:
        """Stops a running command (``why``: "timeout" or "cancel"); a no-op once it ended."""
        with self._lock:
            if run.done.is_set() or run.stopping or self._run is not run:
                return
            run.stopping = why
            self._stopped.clear()
        log.info(
            "session command stopping",
            extra={"session_id": self.session_id, "sandbox_id": self.cid, "why": why},
        )
        threading.Thread(
            target=self._stop_rounds, args=(run,), daemon=True, name="session-stop"
        ).start()

    def _stop_rounds(self, run: CommandRun) -> None:
        try:
            for _ in range(killer.STOP_ROUNDS):
                if run.done.is_set():
                    return
                self._stop_round(run)
                if run.done.wait(killer.ROUND_WAIT_SECONDS):
                    return
            self._end_shell(
                f"the command could not be stopped after {killer.STOP_ROUNDS} rounds; "
                "its shell was ended"
            )
        finally:
            self._stopped.set()

    def _stop_round(self, run: CommandRun) -> None:
        killer.stop_command(
            self._api,
            self.cid,
            shell_pid=self._pid,
            marker=run.marker,
            shell_marker=self.shell_marker,
            running_seconds=time.monotonic() - run.started,
        )

    # ---- the end -------------------------------------------------------------------

    def close(self, reason: str) -> SessionInfo:
        """Ends the session (CLOSED with ``reason``); a DEAD or CLOSED one stays as it is.

        An idle shell exits on the end of its input; a busy one has its
        command stopped and is killed.
        """
        with self._lock:
            if self._state in (SessionState.DEAD, SessionState.CLOSED):
                return self._info()
            busy = self._run
            self._state = SessionState.CLOSED
            self._reason = reason[:MAX_REASON_CHARS]
        if busy is not None:
            busy.stopping = busy.stopping or "cancel"
            self._stop_round(busy)
            killer.end_shell(self._api, self.cid, shell_marker=self.shell_marker)
        self._shell.close()
        return self.info()

    def _end_shell(self, reason: str) -> None:
        with self._lock:
            self._planned_reason = self._planned_reason or reason
        if not killer.end_shell(self._api, self.cid, shell_marker=self.shell_marker):
            self._shell.close()  # the killer could not run: at least end our side

    def _read(self, frames: Iterator[tuple[int, bytes]]) -> None:
        """The reader thread: routes the shell's output until its stream ends."""
        try:
            for stream, data in frames:
                with self._lock:
                    run = self._run
                # Between commands: a background process's output, no one's.
                if run is not None and run.feed(stream, data):
                    self._finish(run)
        except Exception:  # the reader must always reach the end below
            log.exception("session reader failed", extra={"session_id": self.session_id})
        self._died()

    def _finish(self, run: CommandRun) -> None:
        if run.timer is not None:
            run.timer.cancel()
        with self._lock:
            self._run = None
            self._commands += 1
            self._last_used = self._clock()
            if self._state is SessionState.BUSY:
                self._state = SessionState.READY
        self._on_use(False)
        # READY before the exit is sent: a caller that runs its next command
        # as soon as it has the exit finds the session free.
        run.complete(run.status(), session_ended=False)

    def _died(self) -> None:
        code = None
        for attempt in range(20):  # the engine records the status a moment after the end
            code = self._shell.exit_code()
            if code is not None:
                break
            time.sleep(0.005 * (attempt + 1))
        reason = self._planned_reason or self._describe_death(code)
        with self._lock:
            run, self._run = self._run, None
            if self._state is not SessionState.CLOSED:
                self._state = SessionState.DEAD
                self._reason = reason[:MAX_REASON_CHARS]
            if run is not None:
                self._commands += 1
                self._last_used = self._clock()
        self._shell.close()
        if run is not None:
            if run.timer is not None:
                run.timer.cancel()
            self._on_use(False)
            run.complete(-1, session_ended=True)
        log.info(
            "session ended",
            extra={"session_id": self.session_id, "sandbox_id": self.cid, "reason": self._reason},
        )
        self._on_end(self)

    # ---- state ---------------------------------------------------------------------

    def _require_alive(self) -> None:
        if self._state in (SessionState.DEAD, SessionState.CLOSED):
            raise FailedPrecondition(
                f"session {quote(self.session_id)} is {self._state.value}: {self._reason}"
            )

    def idle_for(self, now: datetime) -> float | None:
        """Seconds it has been READY without a command; None unless READY."""
        with self._lock:
            if self._state is not SessionState.READY:
                return None
            return (now - self._last_used).total_seconds()

    @property
    def ended(self) -> bool:
        """Whether it is DEAD or CLOSED."""
        with self._lock:
            return self._state in (SessionState.DEAD, SessionState.CLOSED)

    def info(self) -> SessionInfo:
        """A snapshot of the session."""
        with self._lock:
            return self._info()

    def _info(self) -> SessionInfo:
        return SessionInfo(
            session_id=self.session_id,
            sandbox_id=self.cid,
            shell=self.shell_path,
            state=self._state,
            create_time=self.create_time,
            last_used_time=self._last_used,
            idle_timeout_seconds=self.idle_timeout,
            commands_run=self._commands,
            end_reason=self._reason,
        )
