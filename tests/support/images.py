"""A tiny test image built locally: ``FROM scratch`` plus Debian's static busybox.

No image can be pulled on the machines Longshore is tested on, so tests and
benchmarks build their own in about a second from ``/bin/busybox`` (Debian's
``busybox-static``). The build context is a tar made in memory; nothing is
written to disk.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path

import docker

log = logging.getLogger(__name__)

BUSYBOX_PATH = Path("/bin/busybox")

#: Applets linked into ``/bin``; tests may rely on every one of these.
APPLETS = (
    "sh", "sleep", "cat", "echo", "ps", "kill", "pkill", "true", "false", "env", "ls",
    "id", "pwd", "mkdir", "rm", "wc", "head", "tail", "printf", "grep", "touch", "seq",
    "yes", "nproc", "hostname", "cp", "mv", "date", "dd", "stat", "tr", "cut", "sort",
    "chmod", "test", "[", "expr", "uname", "whoami", "dirname", "basename", "sed", "awk",
    "timeout", "xargs", "find", "base64", "pgrep", "wget", "nc", "df", "du", "ln",
)  # fmt: skip

#: Keeps PID 1 responsive to SIGTERM (a bare ``sleep`` as PID 1 ignores it), so
#: ``docker stop`` returns at once even without ``--init``.
IDLE_COMMAND = ("/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done")

_DOCKERFILE = """\
FROM scratch
COPY rootfs/ /
ENV PATH=/bin
CMD ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"]
"""

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/tmp:/bin/sh\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def ensure_busybox() -> Path:
    """Return the static busybox binary, installing ``busybox-static`` if needed.

    Returns:
        The path of the binary.

    Raises:
        RuntimeError: It is missing and cannot be installed (not root or no apt).
    """
    if BUSYBOX_PATH.is_file():
        return BUSYBOX_PATH
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"{BUSYBOX_PATH} is missing: install Debian's busybox-static "
            "(apt-get install busybox-static)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.info("installing busybox-static")
    subprocess.run(["apt-get", "install", "-y", "-qq", "busybox-static"], check=True, env=env)
    return BUSYBOX_PATH


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def build_context(busybox: Path | None = None) -> io.BytesIO:
    """Build the in-memory tar build context (Dockerfile plus a busybox rootfs).

    Args:
        busybox: The static busybox binary; found or installed when omitted.

    Returns:
        A rewound buffer holding the tar.
    """
    binary = (busybox or ensure_busybox()).read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_file(tar, "Dockerfile", _DOCKERFILE.encode(), 0o644)
        for directory, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700)):
            _add_dir(tar, f"rootfs/{directory}", mode)
        _add_file(tar, "rootfs/bin/busybox", binary, 0o755)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"rootfs/bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            link.mode = 0o777
            tar.addfile(link)
        _add_file(tar, "rootfs/etc/passwd", _PASSWD.encode(), 0o644)
        _add_file(tar, "rootfs/etc/group", _GROUP.encode(), 0o644)
        _add_file(tar, "rootfs/etc/hostname", b"sandbox\n", 0o644)
    buf.seek(0)
    return buf


def build_busybox_image(
    client: docker.DockerClient, tag: str, labels: Mapping[str, str] | None = None
) -> str:
    """Build the busybox test image and return its tag.

    The image's default command idles forever and exits promptly on SIGTERM.
    Containers made from it inherit ``labels``, which is how a test run's
    finaliser finds them even when a test forgot to label a container.

    Args:
        client: A Docker client on the engine to build on.
        tag: The ``repo:tag`` to give the image, e.g. ``longshore-test/busybox:ab12cd34``.
        labels: Image labels, typically the test run label.

    Returns:
        ``tag``.
    """
    context = build_context()
    client.images.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        labels=dict(labels or {}),
        rm=True,
        forcerm=True,
    )
    log.info("built test image", extra={"tag": tag})
    return tag
