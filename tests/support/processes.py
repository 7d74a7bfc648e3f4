"""Start a Longshore service as a real subprocess and wait for its gRPC health.

Only the process this helper started is ever signalled, by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
GEN_PYTHON = REPO_ROOT / "gen" / "python"


class ServiceStartError(RuntimeError):
    """The service exited, or never answered SERVING, before the start timeout."""


class ServiceExitTimeout(subprocess.TimeoutExpired):
    """The service was still running after :meth:`ServiceProcess.wait`'s timeout.

    Its message ends with the log's tail (a hung shutdown's watchdog writes
    every thread's stack there), so a failed test says where it hung.
    """

    def __init__(self, expired: subprocess.TimeoutExpired, tail: str) -> None:
        super().__init__(expired.cmd, expired.timeout, expired.output, expired.stderr)
        self.tail = tail

    def __str__(self) -> str:
        return f"{super().__str__()}; log tail:\n{self.tail}"


def service_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return ``os.environ`` merged with ``extra``, with the repo importable.

    ``PYTHONPATH`` starts with the repo root and ``gen/python`` so that
    ``python -m services.<name>`` works from any working directory.
    """
    env = dict(os.environ)
    env.update(extra or {})
    paths = [str(REPO_ROOT), str(GEN_PYTHON)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ServiceProcess:
    """A service subprocess with its output in a log file.

    Example::

        with ServiceProcess(["python", "-m", "services.sandbox"],
                            env={"LONGSHORE_SANDBOX_LISTEN": addr},
                            health_addr=addr, name="sandbox") as svc:
            svc.start()
            ...

    Args:
        argv: The command; a leading ``"python"`` is replaced by ``sys.executable``.
        env: Variables added to (and overriding) the current environment.
        health_addr: ``host:port`` of the gRPC health service to wait for.
        name: A short name for the log file and messages.
        health_service: The service name to check; ``""`` is the whole server.
        log_dir: Where to write ``<name>.log``; a fresh temp dir when omitted.
        cwd: Working directory, the repo root by default.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        health_addr: str,
        name: str = "service",
        health_service: str = "",
        log_dir: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        args = list(argv)
        if args and args[0] in {"python", "python3"}:
            args[0] = sys.executable
        self.argv = args
        self.env = service_env(env)
        self.health_addr = health_addr
        self.name = name
        self.health_service = health_service
        self.cwd = cwd or REPO_ROOT
        directory = log_dir or Path(tempfile.mkdtemp(prefix=f"longshore-{name}-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The pid of the started process."""
        return self._process().pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or ``None`` while running (negative: killed by that signal)."""
        return None if self._proc is None else self._proc.poll()

    def spawn(self) -> Self:
        """Start the process without waiting for health."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self._log_file = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        return self

    def start(self, timeout: float = 20.0) -> Self:
        """Start the process and wait until its health check answers SERVING.

        Args:
            timeout: Seconds to wait for SERVING.

        Returns:
            ``self``.

        Raises:
            ServiceStartError: The process exited first (with its exit code and
                the tail of its log) or did not become SERVING in time; in the
                latter case it is killed.
        """
        if self._proc is None:
            self.spawn()
        self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = 20.0) -> None:
        """Block until the health check answers SERVING (see :meth:`start`)."""
        proc = self._process()
        deadline = time.monotonic() + timeout
        last = "no answer"
        request = health_pb2.HealthCheckRequest(service=self.health_service)
        with grpc.insecure_channel(self.health_addr) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if proc.poll() is not None:
                    raise ServiceStartError(
                        f"{self.name} exited with {proc.returncode} before serving; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    raise ServiceStartError(
                        f"{self.name} not SERVING on {self.health_addr} after {timeout}s "
                        f"({last}); log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    # wait_for_ready blocks until the port accepts or the short
                    # deadline passes, so this loop does not spin.
                    response = stub.Check(request, timeout=min(0.5, remaining), wait_for_ready=True)
                except grpc.RpcError as exc:
                    last = f"{exc.code().name}: {exc.details()}"
                    if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        self._pause(0.05)
                    continue
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                self._pause(0.05)

    def _pause(self, seconds: float) -> None:
        # Waiting on the process doubles as a short pause and an exit check.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process().wait(timeout=seconds)

    def terminate(self) -> None:
        """Send SIGTERM to this process (its own pid only)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to this process (its own pid only)."""
        self._signal(signal.SIGKILL)

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to this process (its own pid only)."""
        self._signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its exit status.

        Raises:
            subprocess.TimeoutExpired: It is still running after ``timeout``.
        """
        try:
            code = self._process().wait(timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            raise ServiceExitTimeout(expired, self.log_tail(120)) from None
        self._close_log()
        return code

    def stop(self, grace: float = 10.0) -> int | None:
        """Terminate, wait up to ``grace`` seconds, then kill; return the exit status."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self.terminate()
            try:
                return self.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.wait(10)

    def log_text(self) -> str:
        """The whole log written so far."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _signal(self, signum: int) -> None:
        proc = self._process()
        if proc.poll() is None:
            proc.send_signal(signum)

    def _process(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self._proc

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
