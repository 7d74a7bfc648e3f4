"""Exec starts and freezes of one sandbox never overlap.

The engine wedges when it freezes a container (``pause``, or ``commit``,
which pauses while it copies) while an exec is being started in it: the
exec's ``runc init`` is frozen half-way, the pause or commit waits for it and
holds the container's lock, and from then on every call on that container
(inspect, unpause, remove) hangs — a commit also holds image operations of
the whole engine. Seen on engine 20.10 with a snapshot taken right after an
acquire, while the spare exec of that acquire was starting.

So every exec start of this manager is *shared* use of its sandbox, from
``exec_create`` until the engine reports the exec running (or done), and a
freeze is *exclusive*: it waits for the starts in flight and holds new ones
back until it is over. Starts of one sandbox do not wait for each other.
Another manager process of the deployment is not covered (its starts are
its own); the engine's behaviour is the same, so a deployment should pause
and snapshot through the manager that runs the sandbox's commands.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: How long a start waits for the engine to report its exec running.
START_CONFIRM_SECONDS = 5.0
#: Execs created but not yet started that the guard remembers (the oldest are forgotten).
MAX_PENDING_EXECS = 4096
#: Pause between two looks at a starting exec.
_CONFIRM_POLL_SECONDS = 0.002


@dataclass
class _State:
    starting: int = 0
    freezing: bool = False


class FreezeGuard:
    """Shared exec starts, exclusive freezes, per sandbox (entries exist only while in use)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._states: dict[str, _State] = {}

    @contextmanager
    def starting(self, cid: str) -> Iterator[None]:
        """Holds ``cid`` for an exec start (waits while a freeze of it runs)."""
        with self._cond:
            state = self._states.setdefault(cid, _State())
            while state.freezing:
                self._cond.wait()
            state.starting += 1
        try:
            yield
        finally:
            with self._cond:
                state.starting -= 1
                self._drop_if_idle(cid, state)
                self._cond.notify_all()

    @contextmanager
    def freezing(self, cid: str) -> Iterator[None]:
        """Holds ``cid`` for a pause or commit (waits for starts in flight and other freezes)."""
        with self._cond:
            state = self._states.setdefault(cid, _State())
            while state.freezing:
                self._cond.wait()
            state.freezing = True
            while state.starting:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                state.freezing = False
                self._drop_if_idle(cid, state)
                self._cond.notify_all()

    def _drop_if_idle(self, cid: str, state: _State) -> None:
        if not state.starting and not state.freezing and self._states.get(cid) is state:
            del self._states[cid]

    def tracked(self) -> int:
        """Sandboxes with a start or freeze in flight (bounded by them)."""
        with self._cond:
            return len(self._states)


class GuardedApi:
    """The engine's low-level client with this manager's starts and freezes guarded.

    Every other attribute is the wrapped client's. ``exec_create`` notes which
    sandbox an exec belongs to (a bounded map, dropped at its start), so
    ``exec_start`` can hold that sandbox; ``pause`` and ``commit`` freeze it.
    """

    def __init__(self, api: Any, guard: FreezeGuard) -> None:
        self._api = api
        self.guard = guard
        self._lock = threading.Lock()
        self._sandbox_of: OrderedDict[str, str] = OrderedDict()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def exec_create(self, container: str, cmd: Any, **kwargs: Any) -> Any:
        created = self._api.exec_create(container, cmd, **kwargs)
        with self._lock:
            self._sandbox_of[str(created["Id"])] = str(container)
            while len(self._sandbox_of) > MAX_PENDING_EXECS:
                self._sandbox_of.popitem(last=False)
        return created

    def exec_start(self, exec_id: str, *args: Any, **kwargs: Any) -> Any:
        """Starts the exec, held against freezes of its sandbox until it runs.

        An attached start returns once the engine upgraded the connection,
        before the process exists, so the start is confirmed by
        ``exec_inspect``: a pid, or an exit code. One the engine never
        confirms within :data:`START_CONFIRM_SECONDS` releases the hold anyway
        (the caller's reads then tell what happened).
        """
        with self._lock:
            cid = self._sandbox_of.pop(str(exec_id), None)
        if cid is None:  # not created through this client
            return self._api.exec_start(exec_id, *args, **kwargs)
        with self.guard.starting(cid):
            result = self._api.exec_start(exec_id, *args, **kwargs)
            deadline = time.monotonic() + START_CONFIRM_SECONDS
            while True:
                info = self._api.exec_inspect(exec_id)
                # Not "Running": the engine sets it before runc has started
                # the process; the pid is known only once it has.
                if info.get("Pid") or info.get("ExitCode") is not None:
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(_CONFIRM_POLL_SECONDS)
        return result

    def pause(self, container: str) -> Any:
        with self.guard.freezing(str(container)):
            return self._api.pause(container)

    def commit(self, container: str, *args: Any, **kwargs: Any) -> Any:
        with self.guard.freezing(str(container)):
            return self._api.commit(container, *args, **kwargs)
