"""The Docker fixtures against the real engine: image, labels, labelled cleanup."""

from __future__ import annotations

import io
import time

import docker
import pytest

from tests.support.docker_env import DEPLOYMENT_LABEL, RUN_LABEL, cleanup_run, new_run_id
from tests.support.images import APPLETS, build_busybox_image


def test_integration_folder_gets_integration_marker(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("integration") is not None


def test_sandbox_image_runs_echo_and_carries_run_label(
    docker_client: docker.DockerClient, sandbox_image: str, run_id: str
) -> None:
    image = docker_client.images.get(sandbox_image)
    assert image.labels[RUN_LABEL] == run_id
    out = docker_client.containers.run(sandbox_image, ["echo", "hi"], remove=True)
    assert out == b"hi\n"


def test_sandbox_image_has_the_applets(
    docker_client: docker.DockerClient, sandbox_image: str
) -> None:
    script = "for a in " + " ".join(a for a in APPLETS if a != "[") + "; do command -v $a; done"
    out = docker_client.containers.run(sandbox_image, ["sh", "-c", script], remove=True)
    assert len(out.decode().split()) == len(APPLETS) - 1
    out = docker_client.containers.run(
        sandbox_image, ["sh", "-c", "id -un; test -d /tmp && echo tmp"], user="nobody", remove=True
    )
    assert out.decode().split() == ["nobody", "tmp"]


def test_default_command_idles_and_stops_promptly_on_sigterm(
    docker_client: docker.DockerClient, sandbox_image: str
) -> None:
    container = docker_client.containers.run(sandbox_image, detach=True)
    container.reload()
    assert container.status == "running"
    started = time.monotonic()
    container.stop(timeout=10)
    assert time.monotonic() - started < 5
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0


def test_build_is_quick(
    docker_client: docker.DockerClient, run_id: str, run_labels: dict[str, str]
) -> None:
    started = time.monotonic()
    tag = build_busybox_image(docker_client, f"longshore-test/busybox:{run_id}-quick", run_labels)
    assert time.monotonic() - started < 10  # ~1 s normally; generous on a shared machine
    assert docker_client.images.get(tag).labels[RUN_LABEL] == run_id


def test_cleanup_removes_only_its_own_run(
    docker_client: docker.DockerClient, sandbox_image: str, run_id: str
) -> None:
    # A separate run id, so that the session's own resources stay untouched;
    # everything is also labelled with this session's run for the finaliser.
    doomed_run, foreign_run = new_run_id(), new_run_id()
    image = build_busybox_image(
        docker_client, f"longshore-test/busybox:{doomed_run}", {RUN_LABEL: doomed_run}
    )
    # An image built on it (as the E2B template is on the test image): the
    # engine refuses to remove the parent first, and both must go anyway.
    child, _ = docker_client.images.build(
        fileobj=io.BytesIO(f"FROM {image}\nLABEL child=1\n".encode()),
        tag=f"longshore-test/child:{doomed_run}",
        labels={RUN_LABEL: doomed_run},
        rm=True,
    )
    by_run = docker_client.containers.create(image, labels={RUN_LABEL: doomed_run})
    # The image label is inherited; override it to prove the deployment rule alone works.
    by_deployment = docker_client.containers.create(
        image, labels={RUN_LABEL: run_id, DEPLOYMENT_LABEL: f"t{doomed_run}-7"}
    )
    foreign = docker_client.containers.create(
        sandbox_image, labels={RUN_LABEL: run_id, DEPLOYMENT_LABEL: f"t{foreign_run}-1"}
    )
    network = docker_client.networks.create(f"t{doomed_run}-net", labels={RUN_LABEL: doomed_run})
    removed = cleanup_run(docker_client, doomed_run)
    assert set(removed) == {by_run.id, by_deployment.id}
    foreign.reload()  # still there
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(network.id)
    for gone in (image, child.id):
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(gone)
    assert cleanup_run(docker_client, doomed_run) == []
    docker_client.images.get(sandbox_image)  # the session image is untouched
