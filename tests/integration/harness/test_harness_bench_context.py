"""The bench Context against the real engine: image, deployments and cleanup."""

from __future__ import annotations

from pathlib import Path

import docker

from bench.context import Context
from tests.support.docker_env import DEPLOYMENT_LABEL, RUN_LABEL


def test_context_builds_image_and_close_removes_what_it_made(
    docker_client: docker.DockerClient, tmp_path: Path, run_id: str
) -> None:
    ctx = Context(results_dir=tmp_path, log_dir=tmp_path / "logs")
    try:
        image = ctx.sandbox_image()
        deployment = ctx.deployment()
        assert deployment.startswith(f"t{ctx.run_id}-b")
        # Labelled with the session run too, so the session finaliser is a backstop.
        container = docker_client.containers.run(
            image, detach=True, labels={RUN_LABEL: run_id, DEPLOYMENT_LABEL: deployment}
        )
        assert ctx.repeat(20) == 20
    finally:
        ctx.close()
    assert not docker_client.containers.list(all=True, filters={"id": container.id})
    assert not docker_client.images.list(filters={"label": f"{RUN_LABEL}={ctx.run_id}"})
