"""A pause or commit of a sandbox waits for its exec starts, and holds new ones back.

On a fake engine that records the order of calls: a freeze requested while
an exec is starting happens only once the engine reports that exec running;
a start requested during a freeze waits for it; starts in other sandboxes
and other calls are not held; the guard keeps no state once idle.
"""

from __future__ import annotations

import threading
from typing import Any

from services.sandbox.freeze_guard import MAX_PENDING_EXECS, FreezeGuard, GuardedApi

WAIT = 10.0


class FakeEngine:
    """exec_start returns at once; the exec reports running only after ``run`` is set."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.run = threading.Event()
        self.in_pause = threading.Event()
        self.release_pause = threading.Event()
        self.release_pause.set()
        self.inspected = threading.Event()
        self._n = 0

    def _log(self, call: str) -> None:
        with self.lock:
            self.calls.append(call)

    def exec_create(self, container: str, cmd: Any, **_: Any) -> dict[str, str]:
        with self.lock:
            self._n += 1
            return {"Id": f"{container}-e{self._n}"}

    def exec_start(self, exec_id: str, **_: Any) -> str:
        self._log(f"start {exec_id}")
        return "socket"

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        self.inspected.set()
        running = self.run.is_set()
        if running:
            self._log(f"running {exec_id}")
        # The engine says Running before the process exists; only the pid proves it.
        return {"Running": True, "Pid": 42 if running else 0, "ExitCode": None}

    def pause(self, container: str) -> None:
        self._log(f"pause {container}")
        self.in_pause.set()
        assert self.release_pause.wait(WAIT)

    def commit(self, container: str, **_: Any) -> dict[str, str]:
        self._log(f"commit {container}")
        return {"Id": "sha256:x"}

    def inspect_container(self, container: str) -> dict[str, str]:
        self._log(f"inspect {container}")
        return {"Id": container}


def test_a_freeze_waits_until_the_starting_exec_runs() -> None:
    engine = FakeEngine()
    api = GuardedApi(engine, FreezeGuard())
    exec_id = api.exec_create("box", ["true"])["Id"]
    starter = threading.Thread(target=api.exec_start, args=(exec_id,), kwargs={"socket": True})
    starter.start()
    assert engine.inspected.wait(WAIT)  # started, not yet running
    pauser = threading.Thread(target=api.pause, args=("box",))
    pauser.start()
    # Other calls on the sandbox are not held.
    api.inspect_container("box")
    assert "pause box" not in engine.calls
    engine.run.set()
    starter.join(WAIT)
    pauser.join(WAIT)
    assert engine.calls.index(f"running {exec_id}") < engine.calls.index("pause box")
    assert api.guard.tracked() == 0


def test_a_start_during_a_freeze_waits_for_it_and_other_sandboxes_do_not() -> None:
    engine = FakeEngine()
    engine.run.set()
    engine.release_pause.clear()
    api = GuardedApi(engine, FreezeGuard())
    pauser = threading.Thread(target=api.pause, args=("box",))
    pauser.start()
    assert engine.in_pause.wait(WAIT)
    held = api.exec_create("box", ["true"])["Id"]
    starter = threading.Thread(target=api.exec_start, args=(held,))
    starter.start()
    other = api.exec_create("other", ["true"])["Id"]
    api.exec_start(other)  # another sandbox: not held
    assert f"start {other}" in engine.calls and f"start {held}" not in engine.calls
    engine.release_pause.set()
    pauser.join(WAIT)
    starter.join(WAIT)
    assert engine.calls.index("pause box") < engine.calls.index(f"start {held}")
    assert api.commit("box")["Id"] == "sha256:x"
    assert api.guard.tracked() == 0


def test_execs_never_started_are_forgotten_in_bounded_memory() -> None:
    engine = FakeEngine()
    engine.run.set()
    api = GuardedApi(engine, FreezeGuard())
    for _ in range(MAX_PENDING_EXECS + 50):
        api.exec_create("box", ["true"])
    assert len(api._sandbox_of) == MAX_PENDING_EXECS
    # An exec the map forgot still starts (unguarded), as one made elsewhere does.
    assert api.exec_start("box-e1") == "socket"
