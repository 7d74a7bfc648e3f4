"""What the runner hands each scenario: ids, labels, Docker, the test image, cleanup."""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker

from tests.support.docker_env import (
    IMAGE_REPOSITORY,
    RUN_LABEL,
    cleanup_run,
    connect_docker,
    new_run_id,
)
from tests.support.images import build_busybox_image
from tests.support.net import free_port
from tests.support.processes import ServiceProcess

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Shared state for one ``python -m bench`` run.

    Everything created on the engine must carry :attr:`labels` or use a
    deployment from :meth:`deployment`; :meth:`close` removes exactly those.

    Attributes:
        run_id: 8 hex digits naming this run.
        results_dir: Where results are written.
        quick: Smoke mode: scenarios should use :meth:`repeat` to cut samples.
        log_dir: Where started services write their logs.
    """

    run_id: str = field(default_factory=new_run_id)
    results_dir: Path = Path("bench/results")
    quick: bool = False
    log_dir: Path = Path("bench/results/logs")
    _docker: docker.DockerClient | None = None
    _image: str | None = None
    _cleanups: list[Callable[[], object]] = field(default_factory=list)
    _deployments: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def labels(self) -> dict[str, str]:
        """``{"io.longshore.test-run": run_id}`` for anything put on the engine."""
        return {RUN_LABEL: self.run_id}

    @property
    def docker(self) -> docker.DockerClient:
        """A client on a reachable engine (started with scripts/ensure-docker.sh if needed)."""
        if self._docker is None:
            self._docker = connect_docker()
        return self._docker

    def repeat(self, n: int) -> int:
        """``n`` samples normally, a fifth (at least 3) in quick mode."""
        return max(3, n // 5) if self.quick else n

    def deployment(self) -> str:
        """A fresh deployment name ``t<run_id>-b<n>`` (removed by :meth:`close`)."""
        return f"t{self.run_id}-b{next(self._deployments)}"

    def sandbox_image(self) -> str:
        """Tag of the busybox test image, built on first use."""
        if self._image is None:
            tag = f"{IMAGE_REPOSITORY}:{self.run_id}"
            self._image = build_busybox_image(self.docker, tag, self.labels)
        return self._image

    def free_port(self) -> int:
        """A free loopback port."""
        return free_port()

    def service(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        health_addr: str,
        name: str,
        timeout: float = 30.0,
    ) -> ServiceProcess:
        """Start a service subprocess, wait for SERVING, and stop it at :meth:`close`."""
        proc = ServiceProcess(
            argv, env=env, health_addr=health_addr, name=name, log_dir=self.log_dir
        )
        self.add_cleanup(proc.stop)
        return proc.start(timeout=timeout)

    def temp_dir(self, prefix: str) -> Path:
        """A fresh temporary directory, removed with its contents at :meth:`close`.

        Cleanups run last-added first, so the services started after it (which
        write into it) are stopped before it goes.
        """
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    def add_cleanup(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` at :meth:`close` (last added runs first)."""
        self._cleanups.append(fn)

    def close(self) -> None:
        """Run cleanups, then remove this run's containers, networks, volumes and images."""
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception:
                log.exception("bench cleanup failed")
        if self._docker is not None:
            cleanup_run(self._docker, self.run_id)
            self._docker.close()
            self._docker = None
            self._image = None
