"""The e2b front door's rig, shared by the Python and Node conformance tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import docker
import pytest

from tests.integration.e2b.rig import E2bRig, build_template_image, e2b_rig
from tests.integration.sandbox.conftest import remove_deployment

#: The external profile the tests create sandboxes of (an E2B template).
TEMPLATE = "py-tpl"
#: A template whose profile keeps a warm pool of 2.
WARM = "warm-tpl"


@pytest.fixture(scope="package")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
    run_id: str,
    sandbox_image: str,
    run_labels: dict[str, str],
    docker_client: docker.DockerClient,
) -> Iterator[E2bRig]:
    deployment = f"t{run_id}-e2b"
    image = build_template_image(
        docker_client, sandbox_image, f"longshore-test/e2b-template:{run_id}", run_labels
    )
    home = tmp_path_factory.mktemp("e2b-stack")
    saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY")}
    try:
        with e2b_rig(home, deployment=deployment, image=image) as rig:
            rig.profile(TEMPLATE)
            rig.profile("capped", cap=1)
            rig.profile(WARM, warm=2)
            # The two variables of docs/e2b.md, and the key.
            os.environ["E2B_API_URL"] = rig.url
            os.environ["E2B_SANDBOX_URL"] = rig.url
            os.environ["E2B_API_KEY"] = rig.keys.alice
            yield rig
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        remove_deployment(docker_client, deployment)
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(image, force=True)
