"""Docker fixtures: an engine that answers, a run id, labels and labelled cleanup.

Everything a test run creates on the (shared) engine carries this run's label
``io.longshore.test-run=<run_id>`` or a deployment label starting with
``t<run_id>``; the session finaliser removes exactly those and nothing else.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import docker
import pytest
from docker.errors import APIError, DockerException, NotFound

from tests.support.hardening_audit import HardeningAudit
from tests.support.images import build_busybox_image

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_LABEL = "io.longshore.test-run"
DEPLOYMENT_LABEL = "io.longshore.deployment"
IMAGE_REPOSITORY = "longshore-test/busybox"


def new_run_id() -> str:
    """Return a fresh short run id (8 hex digits)."""
    return secrets.token_hex(4)


def connect_docker() -> docker.DockerClient:
    """Return a client on an engine that answers, starting one if we can.

    Runs ``scripts/ensure-docker.sh`` (which installs and starts ``dockerd`` as
    root on Debian) when the first ping fails.

    Raises:
        RuntimeError: No engine answers, with the reason.
    """
    try:
        client = docker.from_env(timeout=60)
        client.ping()
        return client
    except DockerException as exc:
        first_error = exc
    script = REPO_ROOT / "scripts" / "ensure-docker.sh"
    proc = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=180, check=False
    )
    try:
        client = docker.from_env(timeout=60)
        client.ping()
        return client
    except DockerException as exc:
        raise RuntimeError(
            f"no Docker engine reachable ({first_error}); {script.name} exited "
            f"{proc.returncode}: {proc.stderr.strip()[-800:]}; last error: {exc}"
        ) from exc


def _remove_quietly(
    kind: str, remove: Callable[[], object], ident: str, *, warn: bool = True
) -> bool:
    """Whether ``remove`` removed it (or it was gone); a refusal is logged when ``warn``."""
    try:
        remove()
    except NotFound:
        pass
    except APIError as exc:
        if warn:
            log.warning("could not remove %s %s: %s", kind, ident, exc)
        return False
    return True


def cleanup_run(client: docker.DockerClient, run_id: str) -> list[str]:
    """Remove every Docker resource that belongs to test run ``run_id``.

    Containers carrying ``io.longshore.test-run=<run_id>`` or whose
    ``io.longshore.deployment`` label starts with ``t<run_id>`` are force
    removed, then networks, volumes and images carrying the run label.
    ``NotFound`` counts as done; nothing else on the engine is touched.

    Args:
        client: A Docker client.
        run_id: The run whose resources to remove.

    Returns:
        The ids of the containers removed.
    """
    prefix = f"t{run_id}"
    removed: list[str] = []
    for container in client.containers.list(all=True, sparse=True):
        labels = container.attrs.get("Labels") or {}
        if labels.get(RUN_LABEL) == run_id or labels.get(DEPLOYMENT_LABEL, "").startswith(prefix):
            cid = container.id or ""
            _remove_quietly("container", partial(container.remove, force=True, v=True), cid[:12])
            removed.append(cid)
    label_filter = {"label": f"{RUN_LABEL}={run_id}"}
    for network in client.networks.list(filters=label_filter):
        _remove_quietly("network", network.remove, network.name or "")
    for volume in client.volumes.list(filters=label_filter):
        _remove_quietly("volume", partial(volume.remove, force=True), volume.name or "")
    # An image built on another of the run's (a template on the test image)
    # must go first: the engine refuses to remove a parent (409), so what is
    # refused is tried again once its children are gone.
    images = [image.id or "" for image in client.images.list(filters=label_filter)]
    for last in (False, False, True):
        images = [
            i
            for i in images
            if not _remove_quietly(
                "image", partial(client.images.remove, i, force=True), i, warn=last
            )
        ]
        if not images:
            break
    return removed


@pytest.fixture(scope="session")
def run_id() -> str:
    """This session's short unique id (8 hex digits)."""
    return new_run_id()


@pytest.fixture(scope="session")
def run_labels(run_id: str) -> dict[str, str]:
    """Labels to put on anything a test creates on the engine."""
    return {RUN_LABEL: run_id}


@pytest.fixture(scope="session")
def docker_client(run_id: str) -> Iterator[docker.DockerClient]:
    """A client on a reachable engine; removes this run's resources at session end.

    Fails (never skips) when no engine can be reached: in CI a missing engine
    is a broken runner, locally it is a setup step to fix.
    """
    try:
        client = connect_docker()
    except RuntimeError as exc:
        where = "CI=true: the runner must provide Docker" if os.environ.get("CI") == "true" else ""
        pytest.fail(f"Docker engine unavailable: {exc} {where}".strip(), pytrace=False)
    audit = HardeningAudit(client, run_id)
    try:
        yield client
    finally:
        try:
            audit.close()
            if audit.problems:
                pytest.fail(
                    f"sandboxes without the hardening ({len(audit.problems)} of "
                    f"{audit.seen} inspected):\n" + "\n".join(audit.problems[:20]),
                    pytrace=False,
                )
        finally:
            cleanup_run_and_close(client, run_id)


def cleanup_run_and_close(client: docker.DockerClient, run_id: str) -> None:
    """Remove this run's resources, then close the client."""
    try:
        removed = cleanup_run(client, run_id)
        if removed:
            log.info("removed %d test containers", len(removed))
    finally:
        client.close()


_deployments = itertools.count(1)


@pytest.fixture
def test_deployment(run_id: str) -> str:
    """A unique short deployment name ``t<run_id>-<n>`` for one test."""
    return f"t{run_id}-{next(_deployments)}"


@pytest.fixture(scope="session")
def sandbox_image(
    docker_client: docker.DockerClient, run_id: str, run_labels: dict[str, str]
) -> str:
    """Tag of a tiny busybox image (sh, sleep, cat, echo, ps, kill, ...) built for this run.

    Its default command idles until SIGTERM. Containers made from it inherit
    the run label. Removed at session end (after the container cleanup).
    """
    return build_busybox_image(docker_client, f"{IMAGE_REPOSITORY}:{run_id}", run_labels)
