"""No image the stack builds carries ``io.longshore.managed`` (it marks sandboxes only).

A container inherits every label of its image, and an image every label of
its base: a base or service image with the sandbox label makes every service
container look like a sandbox to Longshore, its reaper and ``make down``. The
built images themselves are inspected by tests/e2e/test_compose_stack.py.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SANDBOX_LABEL = "io.longshore.managed"


def code_lines(path: Path) -> list[str]:
    """The script's lines without comments."""
    lines = path.read_text().splitlines()
    return [line for line in lines if not line.lstrip().startswith("#")]


def test_the_local_base_image_is_imported_without_the_sandbox_label() -> None:
    script = REPO / "scripts" / "base-image.sh"
    code = "\n".join(code_lines(script))
    changes = re.findall(r"--change '([^']*)'", code)
    assert "LABEL io.longshore.component=python-base" in changes
    assert not [c for c in changes if SANDBOX_LABEL in c], changes
    # Both imports (a fresh build, and the re-import of an old labelled base) use that list.
    imports = re.findall(r"docker import ([^|\n]*)", code)
    assert len(imports) == 2 and all('"${changes[@]}"' in i for i in imports), imports
    # The only mention in code is the check that finds an old base carrying it.
    mentions = [line for line in code_lines(script) if SANDBOX_LABEL in line]
    assert len(mentions) == 2 and all("inspect" in m or "say" in m for m in mentions), mentions


def test_service_image_builds_add_no_sandbox_label() -> None:
    code = "\n".join(code_lines(REPO / "scripts" / "compose-images.sh"))
    assert SANDBOX_LABEL not in code
    for name in ("sandbox", "kanban", "gateway", "dashboard"):
        assert SANDBOX_LABEL not in (REPO / "services" / name / "Dockerfile").read_text(), name
