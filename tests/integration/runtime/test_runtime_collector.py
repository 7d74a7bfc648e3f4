"""A served process settles its garbage collector once it is built (``services.runtime.collector``).

The process under test is a real ``run_service`` in a subprocess: its build
reports the collector as the interpreter left it, its serve as it serves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from services.runtime.collector import YOUNG_THRESHOLD
from tests.support.processes import service_env

_PROGRAM = textwrap.dedent(
    """
    import gc, json
    from services.runtime import service_main as sm
    from services.runtime.config import BaseSettings

    seen = {}

    class Server:
        def serve(self):
            seen["serving"] = [gc.get_threshold(), gc.get_freeze_count()]
            print(json.dumps(seen))

        def request_stop(self):
            pass

    def build(settings, parts):
        seen["built"] = [gc.get_threshold(), gc.get_freeze_count()]
        return Server()

    raise SystemExit(sm.run_service("probe", BaseSettings, build))
    """
)


def test_the_collector_is_settled_after_the_build_and_before_serving(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM],
        env=service_env({"LONGSHORE_HOME": str(tmp_path), "LONGSHORE_CONFIG": ""}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    (young_built, *older_built), frozen_built = seen["built"]
    (young, *older), frozen = seen["serving"]
    # While building: the interpreter's defaults, nothing frozen.
    assert young_built != YOUNG_THRESHOLD and frozen_built == 0
    # Serving: the young threshold raised, the older ones kept, the built parts frozen.
    assert young == YOUNG_THRESHOLD and older == older_built
    assert frozen > 1000, seen
