"""A shutdown is bounded and says where it hangs: slow closers are logged, and past
``shutdown_timeout_seconds`` every thread's stack goes to stderr and the exit is 1.

The process under test is a real ``run_service`` in a subprocess, stopped by
a real SIGTERM; its one part takes as long to close as the test says.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.processes import service_env

_PROGRAM = textwrap.dedent(
    """
    import os, signal, threading, time
    from services.runtime import service_main as sm
    from services.runtime.config import BaseSettings

    sm.SLOW_CLOSE_SECONDS = 0.1

    class Server:
        def __init__(self):
            self.stopped = threading.Event()

        def serve(self):
            os.kill(os.getpid(), signal.SIGTERM)
            self.stopped.wait(10)

        def request_stop(self):
            self.stopped.set()

    def hung_part():
        time.sleep(float(os.environ["CLOSE_SECONDS"]))

    def build(settings, parts):
        parts.close_on_exit(hung_part)
        return Server()

    raise SystemExit(sm.run_service("probe", BaseSettings, build))
    """
)


def _run(tmp_path: Path, close_seconds: float, bound: float) -> subprocess.CompletedProcess[str]:
    env = {
        "LONGSHORE_HOME": str(tmp_path),
        "LONGSHORE_CONFIG": "",
        "LONGSHORE_SHUTDOWN_TIMEOUT_SECONDS": str(bound),
        "CLOSE_SECONDS": str(close_seconds),
    }
    return subprocess.run(
        [sys.executable, "-c", _PROGRAM],
        env=service_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_hung_shutdown_dumps_every_stack_and_exits_1(tmp_path: Path) -> None:
    done = _run(tmp_path, close_seconds=30, bound=1)
    # faulthandler's dump: the main thread, inside the closer that hangs.
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Thread 0x" in done.stderr or "Current thread" in done.stderr, done.stderr
    assert "in hung_part" in done.stderr, done.stderr


def test_a_slow_part_is_named_and_the_exit_stays_clean(tmp_path: Path) -> None:
    done = _run(tmp_path, close_seconds=0.5, bound=20)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "closing a part was slow" in out and "hung_part" in out, out
    assert "Current thread" not in done.stderr and "Thread 0x" not in done.stderr, done.stderr


def test_a_quick_shutdown_says_nothing(tmp_path: Path) -> None:
    done = _run(tmp_path, close_seconds=0, bound=20)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "closing a part was slow" not in out, out
    assert "Current thread" not in done.stderr and "Thread 0x" not in done.stderr, done.stderr


def test_a_bound_out_of_range_refuses_to_start(tmp_path: Path) -> None:
    done = _run(tmp_path, close_seconds=0, bound=-1)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "shutdown_timeout_seconds" in done.stderr, done.stderr
