"""The hardening audit sees what the engine creates and flags an unhardened sandbox."""

from __future__ import annotations

import time

import docker

from tests.support.docker_env import new_run_id
from tests.support.hardening_audit import HardeningAudit, violations


def test_the_audit_flags_a_labelled_container_without_the_hardening(
    docker_client: docker.DockerClient, sandbox_image: str, run_labels: dict[str, str]
) -> None:
    private = new_run_id()  # its own prefix: the session's audit never sees this one
    audit = HardeningAudit(docker_client, private)
    cid = docker_client.api.create_container(
        sandbox_image,
        labels={
            **run_labels,
            "io.longshore.managed": "1",
            "io.longshore.deployment": f"t{private}",
        },
    )["Id"]
    try:
        deadline = time.monotonic() + 20
        while not audit.problems and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        audit.close()
        docker_client.api.remove_container(cid, force=True)
    assert audit.seen == 1
    assert "no init process" in audit.problems[0]
    assert "CapDrop None" in audit.problems[0]


def test_a_hardened_inspect_has_no_violations() -> None:
    attrs = {
        "HostConfig": {
            "Init": True,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "PidsLimit": 512,
            "Memory": 1 << 30,
            "NanoCpus": 10**9,
            "Tmpfs": {"/tmp": "rw"},
            "NetworkMode": "bridge",
        },
        "Mounts": [],
    }
    assert violations(attrs) == []
    attrs["Mounts"] = [{"Source": "/var/run/docker.sock"}]
    attrs["HostConfig"]["Privileged"] = True
    assert violations(attrs) == ["privileged", "engine socket mounted (/var/run/docker.sock)"]
