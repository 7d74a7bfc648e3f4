"""The service Dockerfiles follow one pattern and match the settings models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.dashboard.settings import DashboardSection
from services.e2b.settings import E2bSection
from services.gateway.settings import GatewaySection
from services.kanban.settings import KanbanSection
from services.sandbox.settings import SandboxSection

REPO = Path(__file__).resolve().parents[3]
PORTS = {
    "gateway": GatewaySection().listen,
    "kanban": KanbanSection().listen,
    "sandbox": SandboxSection().listen,
    "dashboard": DashboardSection().listen,
    "e2b": E2bSection().listen,
}
PER_SERVICE = "# per service -"


def dockerfile(name: str) -> str:
    return (REPO / "services" / name / "Dockerfile").read_text()


def port_of(name: str) -> int:
    return int(PORTS[name].rsplit(":", 1)[1])


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_shared_part_is_identical_so_images_share_layers() -> None:
    assert all(PER_SERVICE in dockerfile(name) for name in PORTS)
    shared = {name: instructions(dockerfile(name).split(PER_SERVICE)[0]) for name in PORTS}
    assert len({tuple(steps) for steps in shared.values()}) == 1, shared


@pytest.mark.parametrize("name", sorted(PORTS))
def test_multi_stage_non_root_exec_entrypoint(name: str) -> None:
    steps = instructions(dockerfile(name))
    froms = [args for word, args in steps if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in steps
    final = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][-1] :]
    users = [args for word, args in final if word == "USER"]
    assert users and not users[-1].startswith(("root", "0")), users
    entry = [args for word, args in final if word == "ENTRYPOINT"]
    assert [json.loads(e) for e in entry] == [["python", "-m", f"services.{name}"]]
    assert ("EXPOSE", str(port_of(name))) in final
    assert ("ENV", f"LONGSHORE_{name.upper()}_LISTEN=0.0.0.0:{port_of(name)}") in final
    labels = " ".join(args for word, args in final if word == "LABEL")
    assert f'io.longshore.component="{name}"' in labels
    # Containers inherit image labels, and io.longshore.managed marks a sandbox.
    assert "io.longshore.managed" not in dockerfile(name)


@pytest.mark.parametrize("name", sorted(PORTS))
def test_healthcheck_probes_the_service_port(name: str) -> None:
    (health,) = [args for word, args in instructions(dockerfile(name)) if word == "HEALTHCHECK"]
    options, _, command = health.partition(" CMD ")
    assert "--interval=" in options and "--start-period=" in options
    argv = json.loads(command)
    port = port_of(name)
    if name == "dashboard":
        assert argv[1].endswith("http-healthcheck.py")
        assert argv[2] == f"http://127.0.0.1:{port}/api/status"
    elif name == "e2b":
        assert argv[1].endswith("http-healthcheck.py")
        assert argv[2] == f"http://127.0.0.1:{port}/health"
    else:
        assert argv == ["python", "-m", "services.runtime.healthcheck", f"127.0.0.1:{port}"]


def test_build_context_ignores_everything_but_what_images_copy() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "**" in ignore
    copied = set()
    for name in PORTS:
        for word, args in instructions(dockerfile(name)):
            if word == "COPY" and not args.startswith("--from"):
                copied.update(src.rstrip("*/") for src in args.split()[:-1])
    for src in copied - {"README"}:
        assert any(line.startswith(f"!{src.split('/')[0]}") for line in ignore), src
