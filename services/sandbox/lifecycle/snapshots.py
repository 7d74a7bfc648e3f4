"""Snapshots: a sandbox's filesystem committed to an image of this deployment.

A snapshot is ``containers.commit`` to ``<sandbox.snapshot_repository>/<deployment>:<tag>``
with labels (``io.longshore.managed``, ``deployment``, ``snapshot-of``,
``profile``, ``task-id``, ``created-ns``), so listing is one label-filtered
image list. What a snapshot holds: the container's writable layer on top of
its image. What it does not: the tmpfs at ``/tmp`` and any volume (the engine
commits neither), running processes and memory, and env values: the
sandbox's ``spec.env`` names are kept with empty values (an image's env
cannot drop a variable its container had), so a secret never outlives its
sandbox in an image.

A spec may name a snapshot image only of its own deployment
(:meth:`Snapshots.admit_image`); which profiles may use one is the
operator's choice through the profile's image and ``allowed_images`` (see
docs/sandbox-lifecycle.md). The count is bounded by ``sandbox.max_snapshots``
and a snapshot a sandbox still uses cannot be deleted.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    quote,
)
from services.sandbox import labels
from services.sandbox.access import short_id
from services.sandbox.docker_client import engine_call
from services.sandbox.policy import check_snapshot_image

if TYPE_CHECKING:
    from services.sandbox.manager import SandboxManager

log = logging.getLogger(__name__)

#: The label naming the sandbox a snapshot image was taken from.
SNAPSHOT_OF = labels.PREFIX + "snapshot-of"
#: Longest image reference DeleteSnapshot accepts (the spec's image bound).
MAX_IMAGE_CHARS = 255
_REPO_UNSAFE = re.compile(r"[^a-z0-9]+")
_REPO_PART_CHARS = 40


def repository_part(deployment: str) -> str:
    """The deployment as an image repository path component (lower case, injective)."""
    safe = _REPO_UNSAFE.sub("-", deployment.lower()).strip("-")
    if safe == deployment and len(safe) <= _REPO_PART_CHARS:
        return safe
    digest = hashlib.sha256(deployment.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe[:_REPO_PART_CHARS] or 'deployment'}-{digest}"


@dataclass(frozen=True)
class Snapshot:
    """A snapshot image as ListSnapshots reports it."""

    image: str
    image_id: str
    sandbox_id: str
    task_id: str
    profile: str
    create_time: datetime | None
    size_bytes: int


class Snapshots:
    """Takes, lists and deletes one deployment's snapshots.

    Args:
        manager: The manager whose engine client, settings and deployment are used.
    """

    def __init__(self, manager: SandboxManager) -> None:
        self._manager = manager
        self.repository = (
            f"{manager.section.snapshot_repository}/{repository_part(manager.deployment)}"
        )
        self._dep_label = labels.sanitize(manager.deployment)
        # Commits take seconds; the bound counts those in flight, so two
        # concurrent snapshots cannot both take the last slot.
        self._lock = threading.Lock()
        self._in_flight = 0

    # ---- admission -----------------------------------------------------------------

    def admit_image(self, image: str) -> None:
        """Refuses a spec's image that is a snapshot of another deployment.

        A reference in the snapshot namespace, or an image id, is inspected
        (its labels say whose snapshot it is); any other name is an ordinary
        image and costs no engine call.

        Raises:
            PermissionDenied: A snapshot of another deployment.
            FailedPrecondition: The image does not exist on the engine.
        """
        namespace = self._manager.section.snapshot_repository + "/"
        if not (image.startswith(namespace) or image.startswith("sha256:")):
            return
        check_snapshot_image(image, self.repository, self._manager.section)
        with engine_call("images.inspect", image=image):
            data = self._manager.api.inspect_image(image)
        lbl = (data.get("Config") or {}).get("Labels") or {}
        if SNAPSHOT_OF in lbl and lbl.get(labels.DEPLOYMENT) != self._dep_label:
            raise PermissionDenied(
                f"spec.image: {quote(image)} is a snapshot of another deployment"
            )
        if image.startswith(namespace) and SNAPSHOT_OF not in lbl:
            raise PermissionDenied(
                f"spec.image: {quote(image)} is in the snapshot repository but is not a "
                "snapshot Longshore took"
            )

    # ---- take ----------------------------------------------------------------------

    def take(self, cid: str) -> Snapshot:
        """Commits the sandbox's filesystem to a new snapshot image.

        Raises:
            NotFound: The sandbox is gone.
            ResourceExhausted: ``sandbox.max_snapshots`` snapshots exist.
            FailedPrecondition: The engine refused the commit.
        """
        data = self._manager.inspect_managed(cid)
        with self._lock:
            count = len(self._rows()) + self._in_flight
            limit = self._manager.section.max_snapshots
            if count >= limit:
                raise ResourceExhausted(
                    f"{count} snapshots exist (sandbox.max_snapshots is {limit}); "
                    "delete one with DeleteSnapshot first"
                )
            self._in_flight += 1
        try:
            return self._commit(data)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _commit(self, data: Mapping[str, Any]) -> Snapshot:
        cid = str(data["Id"])
        config = data.get("Config") or {}
        source = config.get("Labels") or {}
        tag = f"{cid[:12]}-{secrets.token_hex(4)}"
        lbl = {
            labels.MANAGED: "1",
            labels.DEPLOYMENT: self._dep_label,
            SNAPSHOT_OF: cid,
            labels.PROFILE: source.get(labels.PROFILE, labels.UNKNOWN),
            # A warm member a task took says its task in its name, not its label.
            labels.TASK_ID: labels.task_of(source, str(data.get("Name", "")))
            or source.get(labels.TASK_ID, labels.UNKNOWN),
            labels.CREATED_NS: str(time.time_ns()),
        }
        env = self._scrubbed_env(str(data.get("Image") or ""), list(config.get("Env") or []))
        with engine_call("containers.commit", resource=f"sandbox {cid!r}", sandbox_id=cid):
            result = self._manager.api.commit(
                cid, repository=self.repository, tag=tag, conf={"Labels": lbl, "Env": env}
            )
        image_id = str(result["Id"])
        with engine_call("images.inspect", image=image_id):
            inspected = self._manager.api.inspect_image(image_id)
        snapshot = Snapshot(
            image=f"{self.repository}:{tag}",
            image_id=image_id,
            sandbox_id=cid,
            task_id=lbl[labels.TASK_ID],
            profile=lbl[labels.PROFILE],
            create_time=datetime.fromtimestamp(int(lbl[labels.CREATED_NS]) / 1e9, UTC),
            size_bytes=int(inspected.get("Size") or 0),
        )
        log.info(
            "snapshot taken",
            extra={"sandbox_id": cid, "image": snapshot.image, "image_id": image_id},
        )
        return snapshot

    def _scrubbed_env(self, image_id: str, env: list[str]) -> list[str]:
        """The image's own env plus every other variable of the sandbox, emptied.

        The engine merges the container's env into the committed image's
        (a variable can be overridden, never dropped), so each of the
        sandbox's own variables is overridden with an empty value.
        """
        base: list[str] = []
        if image_id:
            with engine_call("images.inspect", image=image_id):
                base = list(
                    (self._manager.api.inspect_image(image_id).get("Config") or {}).get("Env") or []
                )
        names = {entry.partition("=")[0] for entry in base}
        blanks = [
            f"{name}="
            for name in dict.fromkeys(e.partition("=")[0] for e in env)
            if name not in names
        ]
        return base + blanks

    # ---- list and delete -----------------------------------------------------------

    def list_snapshots(self, profile: str = "") -> list[Snapshot]:
        """This deployment's snapshots (one profile's, when given), newest first."""
        out = [self._of_row(row) for row in self._rows(profile)]
        out.sort(
            key=lambda s: (s.create_time or datetime.min.replace(tzinfo=UTC), s.image_id),
            reverse=True,
        )
        return out

    def delete(self, image: str) -> Snapshot:
        """Removes a snapshot image of this deployment; returns what it was.

        Raises:
            InvalidArgument: Empty or over-long reference.
            NotFound: No such snapshot of this deployment.
            FailedPrecondition: A sandbox (of any state) still uses it.
        """
        if not image:
            raise InvalidArgument("image: required")
        if len(image) > MAX_IMAGE_CHARS:
            raise InvalidArgument(f"image: at most {MAX_IMAGE_CHARS} characters, got {len(image)}")
        found = self._find(image)
        with engine_call("containers.list", image=found.image_id):
            users = self._manager.api.containers(all=True, filters={"ancestor": found.image_id})
        if users:
            first = users[0]
            raise FailedPrecondition(
                f"snapshot {quote(image)} is used by sandbox {short_id(str(first['Id']))} "
                f"({first.get('State', 'unknown')}); release it (force_remove) first"
            )
        with engine_call("images.remove", image=found.image_id):
            self._manager.api.remove_image(found.image_id)
        log.info("snapshot deleted", extra={"image": found.image, "image_id": found.image_id})
        return found

    def _find(self, ref: str) -> Snapshot:
        bare = ref.removeprefix("sha256:")
        for row in self._rows():
            snap = self._of_row(row)
            tags = list(row.get("RepoTags") or [])
            if ref in tags or (
                len(bare) >= 12 and snap.image_id.removeprefix("sha256:").startswith(bare)
            ):
                return snap
        raise NotFound(f"snapshot {quote(ref)} not found in this deployment")

    def _rows(self, profile: str = "") -> list[dict[str, Any]]:
        filters = [f"{labels.MANAGED}=1", f"{labels.DEPLOYMENT}={self._dep_label}", SNAPSHOT_OF]
        if profile:
            filters.append(f"{labels.PROFILE}={labels.sanitize(profile)}")
        with engine_call("images.list"):
            return list(self._manager.api.images(filters={"label": filters}))

    def _of_row(self, row: Mapping[str, Any]) -> Snapshot:
        lbl = row.get("Labels") or {}
        tags = [t for t in (row.get("RepoTags") or []) if t.startswith(self.repository + ":")]
        created_ns = lbl.get(labels.CREATED_NS, "")
        created = (
            datetime.fromtimestamp(int(created_ns) / 1e9, UTC)
            if created_ns.isdigit()
            else datetime.fromtimestamp(int(row.get("Created") or 0), UTC)
        )
        return Snapshot(
            image=tags[0] if tags else str(row["Id"]),
            image_id=str(row["Id"]),
            sandbox_id=str(lbl.get(SNAPSHOT_OF, "")),
            task_id=str(lbl.get(labels.TASK_ID, "")),
            profile=str(lbl.get(labels.PROFILE, "")),
            create_time=created,
            size_bytes=int(row.get("Size") or 0),
        )
