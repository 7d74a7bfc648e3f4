"""Run Longshore's services as child processes: start in order, watch, restart, stop.

What DESIGN.md "Supervision" asks of ``longshore up``: every child's address
is checked free before anything starts; children start in order and each must
answer its health check - from the child itself, not from whatever else holds
its port - before the next starts; a crashed
child is restarted after ``min(60, 2**n)`` seconds (n = rapid crashes so far),
``up`` gives up after 5 rapid crashes, and a child that stayed up 300 s has
its count reset. Unsupervised, a child's exit ends ``up`` with its exit code.
Each child's output goes to a rotated file under
``$LONGSHORE_HOME/logs/<service>/`` and, prefixed, to the terminal. Stopping
goes in reverse order: SIGTERM, a grace period, then SIGKILL - always to the
child's own pid.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import logging.handlers
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
HEALTH_DETAIL_KEY = "longshore-health-detail"
# How long a child that exited may take to hand over its last output lines.
DRAIN_SECONDS = 5.0
_JSON_MSG = re.compile(r'"msg": "((?:[^"\\]|\\.)*)"')
# The line of a Python traceback that says what was raised ("pkg.SomeError: why").
_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")
TAIL_LINES = 40


@dataclass(frozen=True)
class ChildSpec:
    """How to run one service."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    grpc_health: str = ""
    http_health: str = ""
    listen: str = ""
    """The ``host:port`` the child binds; checked free before anything starts."""


@dataclass
class CrashPolicy:
    """Decides, per child, whether and when a crashed child comes back.

    Attributes:
        backoff_base: Seconds of the first delay (1 → 1, 2, 4, ... capped at 60).
        max_rapid_crashes: Crashes in a row after which supervision gives up.
        healthy_reset: Uptime (s) after which the crash count starts over.
    """

    backoff_base: float = 1.0
    max_rapid_crashes: int = 5
    healthy_reset: float = 300.0
    max_delay: float = 60.0
    crashes: dict[str, int] = field(default_factory=dict)

    def on_crash(self, name: str, uptime: float) -> float | None:
        """Record a crash of ``name`` after ``uptime`` seconds up.

        Returns:
            Seconds to wait before restarting it, or None to give up.
        """
        count = 0 if uptime >= self.healthy_reset else self.crashes.get(name, 0)
        count += 1
        self.crashes[name] = count
        if count >= self.max_rapid_crashes:
            return None
        return float(min(self.max_delay, self.backoff_base * 2 ** (count - 1)))


class LogSink:
    """Writes one child's output lines to its rotated file and, prefixed, to a terminal."""

    def __init__(self, name: str, log_dir: Path, terminal: IO[str] | None, width: int) -> None:
        directory = log_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.log"
        self._file = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
        self._file.setFormatter(logging.Formatter("%(message)s"))
        self._terminal = terminal
        self._prefix = f"{name:<{width}} | "
        self._lock = threading.Lock()
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def write(self, line: str) -> None:
        """Record one line (without its newline)."""
        record = logging.LogRecord("up", logging.INFO, "", 0, line, None, None)
        with self._lock:
            if line.strip():
                self.tail.append(line.rstrip())
            self._file.emit(record)
            if self._terminal is not None:
                self._terminal.write(self._prefix + line + "\n")
                self._terminal.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class Child:
    """One running (or restartable) service process."""

    def __init__(self, spec: ChildSpec, sink: LogSink, events: queue.Queue[Child]) -> None:
        self.spec = spec
        self.sink = sink
        self._events = events
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_due: float | None = None
        self._drained = threading.Event()

    @property
    def name(self) -> str:
        """The service name."""
        return self.spec.name

    def spawn(self) -> None:
        """Start the process (its own session, so a terminal Ctrl-C reaches only ``up``)."""
        self.proc = subprocess.Popen(
            list(self.spec.argv),
            env=self.spec.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        self._drained = threading.Event()
        proc = self.proc
        threading.Thread(
            target=self._pump, args=(proc,), name=f"{self.name}-log", daemon=True
        ).start()

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.sink.write(raw.decode("utf-8", "replace").rstrip("\n"))
        proc.wait()
        self._drained.set()
        self._events.put(self)

    def last_words(self) -> str:
        """Why the child said it stopped: its last output line, for a one-line message.

        A JSON log line gives its ``msg``; after a traceback, the line naming
        what was raised (the traceback's last line may be a footnote). Waits
        (bounded) for the output of a child that exited to be read first.
        """
        if not self.running():
            self._drained.wait(DRAIN_SECONDS)
        tail = list(self.sink.tail)
        if not tail:
            return "no output"
        line = tail[-1]
        if not line.startswith("{"):
            # A traceback: its unindented "pkg.SomeError: why" line, not a footnote.
            line = next((t for t in reversed(tail) if _RAISED.match(t)), line)
        line = line.strip()
        match = _JSON_MSG.search(line)
        if line.startswith("{") and match:
            line = match.group(1)
        return line[:300]

    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int:
        """The exit status as a shell reports it (128+N for signal N)."""
        code = self.proc.poll() if self.proc is not None else 0
        if code is None:
            return 0
        return 128 - code if code < 0 else code

    def wait_healthy(self, timeout: float) -> None:
        """Block until the child answers its health check.

        Raises:
            RuntimeError: It exited first or did not answer in time.
        """
        deadline = time.monotonic() + timeout
        answer = "no answer yet"
        while True:
            if not self.running():
                raise RuntimeError(
                    f"{self.name} exited with {self.exit_code()} before it was healthy: "
                    f"{self.last_words()} (log: {self.sink.path})"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"{self.name} not healthy after {timeout:g}s ({answer}); last output: "
                    f"{self.last_words()} (log: {self.sink.path})"
                )
            healthy, answer = self._probe(min(1.0, remaining))
            if not healthy:
                continue
            # Whatever answered must be this child: another process (a second
            # `up`, a compose stack) may hold the port the child failed to bind.
            if self._holds_port() is False:
                answer = f"{answer}, but from another process on {self.spec.listen}"
                time.sleep(0.2)
            elif self.running():
                return

    def _holds_port(self) -> bool | None:
        """Whether the child listens on its port (None: this system cannot tell)."""
        if self.proc is None or not self.spec.listen:
            return None
        port = int(self.spec.listen.rpartition(":")[2])
        return listens_on(self.proc.pid, port)

    def _probe(self, timeout: float) -> tuple[bool, str]:
        """One health check: (healthy, what it answered)."""
        if self.spec.grpc_health:
            with grpc.insecure_channel(self.spec.grpc_health) as channel:
                try:
                    reply, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
                        health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=True
                    )
                except grpc.RpcError as exc:
                    time.sleep(0.1)
                    return False, exc.code().name if isinstance(exc, grpc.Call) else str(exc)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            detail = dict(call.trailing_metadata() or ()).get(HEALTH_DETAIL_KEY, "")
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            if not serving:
                time.sleep(0.2)  # it answered at once: do not spin until it is ready
            return serving, f"{status}: {detail}" if detail else status
        if self.spec.http_health:
            try:
                with urllib.request.urlopen(self.spec.http_health, timeout=timeout):  # noqa: S310
                    return True, "HTTP answered"
            except urllib.error.HTTPError:
                return True, "HTTP answered"  # e.g. 401 from the auth gate: it is up
            except OSError as exc:
                time.sleep(0.2)
                return False, str(exc)[:200]
        return True, "no health check"

    def stop(self, grace: float) -> None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL (own pid only)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Supervisor:
    """Starts children in order, supervises them, and stops them in reverse order."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        log_dir: Path,
        supervise: bool = True,
        policy: CrashPolicy | None = None,
        terminal: IO[str] | None = None,
        say: Callable[[str], None] = print,
        grace: float = 15.0,
        health_timeout: float = 60.0,
    ) -> None:
        width = max(len(s.name) for s in specs)
        self._events: queue.Queue[Child] = queue.Queue()
        self.children = [
            Child(spec, LogSink(spec.name, log_dir, terminal, width), self._events)
            for spec in specs
        ]
        self._supervise = supervise
        self._policy = policy or CrashPolicy()
        self._say = say
        self._grace = grace
        self._health_timeout = health_timeout
        self._stop = threading.Event()
        self._stopping = False

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop everything (safe from a signal handler)."""
        self._stop.set()

    def start(self) -> None:
        """Start every child in order, each healthy before the next.

        Raises:
            RuntimeError: A child's address is taken (nothing started), or a child
                did not become healthy (the ones started are stopped); the
                message names the child and why.
        """
        # Imported here: the other CLI commands need none of the server plumbing.
        from services.runtime.server_base import BindError, check_listen

        for child in self.children:
            if child.spec.listen:
                try:
                    check_listen(child.spec.listen)
                except BindError as exc:
                    # Nothing started yet: the one line is the whole story.
                    raise RuntimeError(f"{child.name}: {exc}") from None
        try:
            for child in self.children:
                if self._stop.is_set():
                    raise RuntimeError("interrupted while starting")
                child.spawn()
                assert child.proc is not None
                self._say(f"started {child.name} (pid {child.proc.pid})")
                child.wait_healthy(self._health_timeout)
        except BaseException:
            self.stop()
            raise

    def run(self) -> int:
        """Supervise until asked to stop or a child ends ``up``; return the exit code."""
        try:
            while not self._stop.is_set():
                timeout = self._next_wakeup()
                try:
                    child = self._events.get(timeout=timeout)
                except queue.Empty:
                    self._restart_due()
                    continue
                if self._stopping or child.restart_due is not None:
                    continue
                code = child.exit_code()
                if not self._supervise:
                    self._say(f"{child.name} exited with {code}; stopping (--no-supervise)")
                    return code
                uptime = time.monotonic() - child.started_at
                delay = self._policy.on_crash(child.name, uptime)
                if delay is None:
                    self._say(
                        f"{child.name} crashed {self._policy.max_rapid_crashes} times in a row "
                        f"(last exit {code}: {child.last_words()}); giving up "
                        f"(log: {child.sink.path})"
                    )
                    return code or 1
                self._say(
                    f"{child.name} exited with {code}; restarting in {delay:g}s "
                    f"(last output: {child.last_words()})"
                )
                child.restart_due = time.monotonic() + delay
            return 0
        finally:
            self.stop()

    def _next_wakeup(self) -> float:
        due = [c.restart_due for c in self.children if c.restart_due is not None]
        # Short enough that a stop request is noticed promptly; no busy loop.
        wait = 0.25
        if due:
            wait = max(0.0, min(wait, min(due) - time.monotonic()))
        return wait

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if (
                child.restart_due is not None
                and child.restart_due <= now
                and not self._stop.is_set()
            ):
                child.restart_due = None
                child.spawn()
                assert child.proc is not None
                self._say(f"restarted {child.name} (pid {child.proc.pid})")

    def stop(self) -> None:
        """Stop every child in reverse start order (idempotent)."""
        if self._stopping:
            return
        self._stopping = True
        for child in reversed(self.children):
            if child.running():
                self._say(f"stopping {child.name}")
            child.stop(self._grace)
        for child in self.children:
            child.sink.close()


def listeners(pid: int) -> set[tuple[str, int]] | None:
    """The (address, port) of every TCP socket process ``pid`` listens on.

    Reads Linux's ``/proc/<pid>/net/tcp{,6}`` (listening sockets and their
    inodes, in the process's network namespace) and ``/proc/<pid>/fd`` (the
    sockets it holds). An IPv4-mapped address is given as IPv4.

    Returns:
        The set, or None where ``/proc`` does not tell (not Linux, or the
        process is gone).
    """
    proc = Path("/proc") / str(pid)
    listening: dict[str, tuple[str, int]] = {}
    try:
        for table in ("tcp", "tcp6"):
            path = proc / "net" / table
            rows = path.read_text().splitlines()[1:] if path.exists() else []
            for row in rows:
                # sl, local "ADDR:PORT" (hex), remote, state (0A = LISTEN), ..., inode
                cols = row.split()
                if len(cols) > 9 and cols[3] == "0A":
                    address, _, port = cols[1].partition(":")
                    listening[f"socket:[{cols[9]}]"] = (_proc_address(address), int(port, 16))
        fds = list((proc / "fd").iterdir())
    except OSError:
        return None
    held: set[tuple[str, int]] = set()
    for fd in fds:
        try:
            target = str(fd.readlink())
        except OSError:
            continue  # closed since the listing: not a listener
        if target in listening:
            held.add(listening[target])
    return held


def _proc_address(hex_address: str) -> str:
    """``/proc/net/tcp*`` address (32-bit words, host byte order) as text."""
    raw = b"".join(
        bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8)
    )
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` listens on TCP ``port`` (None: ``/proc`` does not tell)."""
    held = listeners(pid)
    return None if held is None else any(p == port for _, p in held)


def child_env(base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """The environment of a child: ``base`` with ``extra`` on top."""
    env = dict(base)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def current_env() -> dict[str, str]:
    """A copy of this process's environment (the one place ``up`` reads it)."""
    return dict(os.environ)
