"""The real stack plus the E2B front door, and an E2B template image.

The stack is the usual sandbox, kanban and gateway processes
(:mod:`tests.integration.gateway.stack`) with four keys: an operator, two
E2B users (read, write and worker: what an E2B create needs), a reader and a
writer without ``worker``.
The front door is ``python -m services.e2b`` on a free port. E2B's SDK runs
``/bin/bash -l -c CMD``; the template image is the busybox test image with a
``/bin/bash`` that execs busybox's ``sh``.
"""

from __future__ import annotations

import io
import secrets
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
from longshore.kanban.v1 import kanban_service_pb2, profile_pb2

from services.e2b.tokens import Sealer
from services.gateway.auth import key_entry, new_key
from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.support.net import free_port
from tests.support.processes import ServiceProcess, ServiceStartError

BASH_SHIM = b'#!/bin/sh\nexec /bin/sh "$@"\n'


def build_template_image(
    client: docker.DockerClient, base: str, tag: str, labels: dict[str, str]
) -> str:
    """``base`` plus a ``/bin/bash`` shim; returns ``tag``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in (
            ("Dockerfile", f"FROM {base}\nCOPY bash /bin/bash\n".encode(), 0o644),
            ("bash", BASH_SHIM, 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, labels=labels, rm=True)
    return tag


@dataclass(frozen=True)
class E2bKeys:
    """Plain-text keys the gateway accepts."""

    admin: str
    alice: str
    bob: str
    reader: str
    writer: str

    @classmethod
    def new(cls) -> E2bKeys:
        return cls(new_key(), new_key(), new_key(), new_key(), new_key())

    def entries(self) -> str:
        user = ["read", "write", "worker"]
        return ",".join(
            [
                key_entry("ops", ["read", "write", "worker", "admin"], self.admin),
                key_entry("alice", user, self.alice),
                key_entry("bob", user, self.bob),
                key_entry("viewer", ["read"], self.reader),
                key_entry("scribe", ["read", "write"], self.writer),
            ]
        )


@dataclass
class E2bRig:
    """A running stack and front door."""

    stack: RealStack
    stubs: Stubs
    keys: E2bKeys
    url: str
    deployment: str
    front_door: ServiceProcess
    #: Opens and seals tokens as the front door does (it shares its secret).
    sealer: Sealer

    def logs(self) -> str:
        return self.stack.logs() + "\n== e2b\n" + self.front_door.log_tail(80)

    def profile(self, name: str, cap: int = 0, warm: int = 0) -> None:
        """An external profile (a template), made by the operator; ``warm``: its pool size."""
        self.stubs.kanban.CreateProfile(
            kanban_service_pb2.CreateProfileRequest(
                profile=profile_pb2.Profile(
                    name=name,
                    executor=profile_pb2.EXECUTOR_EXTERNAL,
                    max_in_progress=cap,
                    warm_pool_size=warm,
                )
            ),
            timeout=30,
            metadata=auth(self.keys.admin),
        )


def gone(engine: docker.DockerClient, cid: str, bound: float = 60.0) -> bool:
    """Whether the container is gone within ``bound`` seconds (removal is asynchronous)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            engine.api.inspect_container(cid)
        except docker.errors.NotFound:
            return True
        threading.Event().wait(0.1)
    return False


def wait_http(front_door: ServiceProcess, url: str, timeout: float = 60.0) -> None:
    """Until ``GET /health`` answers 204 (bounded; fails if the process exits)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if front_door.returncode is not None:
                raise ServiceStartError(
                    f"e2b exited {front_door.returncode}:\n{front_door.log_tail()}"
                )
            try:
                if client.get(url + "/health").status_code == 204:
                    return
            except httpx.TransportError:
                pass
            front_door._pause(0.05)
    raise ServiceStartError(f"e2b did not answer /health in {timeout} s:\n{front_door.log_tail()}")


@contextmanager
def e2b_rig(
    home: Path, *, deployment: str, image: str, default_template: str = ""
) -> Iterator[E2bRig]:
    """The stack, then the front door; all stopped on exit."""
    keys = E2bKeys.new()
    secret = secrets.token_hex(32)
    with (
        real_stack(
            home,
            deployment=deployment,
            image=image,
            gateway_env={"LONGSHORE_GATEWAY_API_KEYS": keys.entries()},
        ) as stack,
        stack.channel() as channel,
    ):
        listen = f"127.0.0.1:{free_port()}"
        env = {
            "LONGSHORE_HOME": str(home),
            "LONGSHORE_DEPLOYMENT": deployment,
            "LONGSHORE_GATEWAY_ADDR": stack.gateway_addr,
            "LONGSHORE_E2B_LISTEN": listen,
            "LONGSHORE_E2B_DEFAULT_TEMPLATE": default_template,
            "LONGSHORE_E2B_TOKEN_SECRET": secret,
            "LONGSHORE_SHUTDOWN_DELAY_SECONDS": "0",
        }
        with ServiceProcess(
            ["python", "-m", "services.e2b"],
            env=env,
            health_addr=listen,
            name="e2b",
            log_dir=home / "logs",
        ) as front_door:
            front_door.spawn()
            url = f"http://{listen}"
            wait_http(front_door, url)
            yield E2bRig(stack, Stubs(channel), keys, url, deployment, front_door, Sealer(secret))
