"""One long-lived shell in a sandbox: a ``docker exec -i`` with a raw attached socket.

The exec is created with stdin attached and no TTY, so the engine's stream
multiplexes stdout and stderr in frames (demultiplexed by the Docker SDK's
``frames_iter``) and what we write to the socket is the shell's stdin.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import docker
import requests
from docker.utils.socket import frames_iter

from services.runtime.errors import ServiceError, Unavailable
from services.sandbox.docker_client import engine_call

log = logging.getLogger(__name__)


class Shell:
    """The engine side of a session's shell.

    Args:
        api: The engine's low-level client.
        cid: Full id of the sandbox.
        argv0: The shell program.
        env: The shell's environment (its exec marker included).
        workdir: Starting directory ("" = the sandbox's).
    """

    def __init__(
        self, api: docker.APIClient, cid: str, argv0: str, env: Mapping[str, str], workdir: str
    ) -> None:
        self._api = api
        self.cid = cid
        self._argv0 = argv0
        self._env = dict(env)
        self._workdir = workdir
        self._sock: Any = None
        self._exec_id = ""
        # Writes come from handlers (commands) and the killer's thread never
        # writes; the lock keeps one command's line whole on the pipe.
        self._write_lock = threading.Lock()
        self._closed = threading.Event()

    def start(self) -> None:
        """Creates and starts the exec; the shell then waits for its first line.

        Raises:
            NotFound: The sandbox is gone.
            FailedPrecondition: The sandbox is not running.
            Unavailable: The engine is unreachable.
        """
        where = f"sandbox {self.cid[:12]!r}"
        with engine_call("exec.create", resource=where, sandbox_id=self.cid):
            self._exec_id = str(
                self._api.exec_create(
                    self.cid,
                    [self._argv0],
                    stdin=True,
                    stdout=True,
                    stderr=True,
                    tty=False,
                    environment=self._env,
                    workdir=self._workdir or None,
                )["Id"]
            )
        with engine_call("exec.start", resource=where, sandbox_id=self.cid):
            self._sock = self._api.exec_start(self._exec_id, socket=True)

    def send(self, data: bytes) -> None:
        """Writes to the shell's stdin.

        Raises:
            Unavailable: The shell's connection is gone (the shell died).
        """
        raw = self._raw()
        if raw is None:
            raise Unavailable(f"the session's shell in sandbox {self.cid[:12]!r} is gone")
        try:
            with self._write_lock:
                raw.sendall(data)
        except OSError as exc:
            raise Unavailable(
                f"the session's shell in sandbox {self.cid[:12]!r} is gone: {exc}"
            ) from exc

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """(stream, bytes) as the shell writes them (1 stdout, 2 stderr), until it ends."""
        sock = self._sock
        if sock is None:
            return
        try:
            yield from frames_iter(sock, tty=False)
        except (OSError, ValueError, requests.exceptions.RequestException) as exc:
            # ValueError: a read on a socket file that close() closed.
            if not self._closed.is_set():
                log.info("session shell stream broke", extra={"error": str(exc)[:200]})

    def exit_code(self) -> int | None:
        """The shell's exit status once the engine recorded it (None: unknown)."""
        if not self._exec_id:
            return None
        try:
            with engine_call("exec.inspect", sandbox_id=self.cid):
                info = self._api.exec_inspect(self._exec_id)
        except ServiceError:
            return None
        if info.get("Running") or info.get("ExitCode") is None:
            return None
        return int(info["ExitCode"])

    def close(self) -> None:
        """Closes the connection; a shell reading stdin then sees EOF and exits."""
        self._closed.set()
        sock, self._sock = self._sock, None
        if sock is None:
            return
        raw = getattr(sock, "_sock", None) or sock
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def _raw(self) -> Any:
        sock = self._sock
        if sock is None:
            return None
        return getattr(sock, "_sock", None) or sock
