"""Get-or-create of persistent sandboxes: the steps behind :meth:`SandboxManager.acquire`.

Persistent sandboxes have a deterministic name, so get-or-create is atomic
across processes: a create that loses the name race (the engine's 409,
:class:`NameTaken`) re-probes and adopts the container another process just
made. Within a process a per-key lock serialises acquires for one
(task, profile). A sandbox that is broken (does not start, exits at once) or
whose config hash changed is removed and replaced, and the outcome says why.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import docker

from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    quote,
)
from services.sandbox import labels
from services.sandbox.docker_client import NameTaken, engine_call, explain
from services.sandbox.hardening import host_config_kwargs
from services.sandbox.model import AcquireResult, Outcome, ResolvedSpec, SandboxInfo
from services.sandbox.settings import SandboxSection

log = logging.getLogger(__name__)

#: How long an acquire keeps re-probing while another process holds the key.
_ACQUIRE_DEADLINE_SECONDS = 30.0


class AcquireSteps:
    """The get-or-create steps, mixed into :class:`~services.sandbox.manager.SandboxManager`.

    The attributes and the two methods below are the manager's; they are
    declared here so the steps type-check on their own.
    """

    api: docker.APIClient
    section: SandboxSection
    deployment: str
    owner: str
    _locks_guard: threading.Lock
    _key_locks: dict[tuple[str, str], tuple[threading.Lock, int]]

    def forget(self, cid: str) -> None:
        """Drops cached facts about a sandbox (the manager's)."""
        raise NotImplementedError

    def _inspect_info(self, ref: str) -> SandboxInfo:
        raise NotImplementedError

    def inspect_or_none(self, ref: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def _warm_handout(
        self, task_id: str, profile: str, spec: ResolvedSpec, name: str
    ) -> AbstractContextManager[Callable[[], SandboxInfo | None] | None]:
        """The warm pool's handout for this acquire (the manager's; see :mod:`.pools`)."""
        raise NotImplementedError

    @contextmanager
    def _key_lock(self, task_id: str, profile: str) -> Iterator[None]:
        key = (task_id, profile)
        with self._locks_guard:
            lock, users = self._key_locks.get(key, (threading.Lock(), 0))
            self._key_locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._locks_guard:
                lock, users = self._key_locks[key]
                if users == 1:
                    del self._key_locks[key]
                else:
                    self._key_locks[key] = (lock, users - 1)

    def _acquire_persistent(self, task_id: str, profile: str, spec: ResolvedSpec) -> AcquireResult:
        # Each round re-probes, so whatever another process did meanwhile
        # (created, started, replaced the container) is seen, not fought.
        filters = {"label": labels.key_filters(self.deployment, profile, task_id)}
        name = labels.container_name(self.deployment, profile, task_id)
        outcome, reason = Outcome.CREATED, "no sandbox for the key"
        deadline = time.monotonic() + _ACQUIRE_DEADLINE_SECONDS
        backoff = 0.02
        while time.monotonic() < deadline:
            found: list[dict[str, Any]] = []
            taken = None
            with self._warm_handout(task_id, profile, spec, name) as take_warm:
                if take_warm is not None:
                    # A warm member is renamed to the key name, and every
                    # persistent sandbox of the key holds that name (it is
                    # created under it, a taken member renamed to it): a
                    # rename that wins the name proves there is none, so a
                    # hit lists nothing of the key. The rename fails (409)
                    # when the name is taken; the probes below adopt it. A
                    # concurrent create of the key loses the name race.
                    with contextlib.suppress(NameTaken):
                        taken = take_warm()
                if taken is None:
                    with engine_call("containers.list", task_id=task_id, profile=profile):
                        found = self.api.containers(all=True, filters=filters)
            if taken is not None:
                return AcquireResult(
                    taken, Outcome.TAKEN_FROM_POOL, f"warm member of pool {profile!r}"
                )
            if not found:
                # A member a task took earlier, or any sandbox holding the key's name.
                found = self._probe_name(name)
            if not found:
                try:
                    info = self._create_started(task_id, profile, spec, persist=True, name=name)
                except NameTaken:
                    # The engine reserves the name before the container shows up in
                    # lists or inspects; under load that window lasts a while.
                    log.info(
                        "name taken by a concurrent acquire; adopting",
                        extra={"container_name": name},
                    )
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 0.5)
                    continue
                except NotFound:
                    continue  # removed by a concurrent acquire right after we made it
                return AcquireResult(info, outcome, reason)
            found.sort(
                key=lambda c: (
                    c.get("State") == "running",
                    labels.created_ns(c.get("Labels") or {}, c.get("Created", 0)),
                ),
                reverse=True,
            )
            current = found[0]
            cid = str(current["Id"])
            old_hash = (current.get("Labels") or {}).get(labels.CONFIG_HASH, "")
            if old_hash != spec.config_hash:
                self.remove_now(cid)
                outcome = Outcome.REPLACED_CONFIG_CHANGED
                reason = f"config hash changed: {old_hash or 'none'} -> {spec.config_hash}"
                continue
            attached = self._attach(cid, str(current.get("State", "")))
            if attached is not None:
                return attached
            outcome = Outcome.REPLACED_START_FAILED
            reason = f"start of {current.get('State')} sandbox failed"
        raise Unavailable(f"sandbox {name!r} kept changing under concurrent acquires; retry")

    def _probe_name(self, name: str) -> list[dict[str, Any]]:
        """The container holding a key's name, as a list row ([] when none).

        Its labels may not say the task: a warm member a task took carries
        the pool's (see :mod:`.pools`), so the key's name is asked too.
        """
        data = self.inspect_or_none(name)
        if data is None:
            return []
        lbl = (data.get("Config") or {}).get("Labels") or {}
        if lbl.get(labels.MANAGED) != "1" or lbl.get(labels.DEPLOYMENT) != labels.sanitize(
            self.deployment
        ):
            return []
        return [
            {
                "Id": data["Id"],
                "State": (data.get("State") or {}).get("Status", ""),
                "Labels": lbl,
                "Created": 0,
            }
        ]

    def _attach(self, cid: str, state: str) -> AcquireResult | None:
        """Attaches to (starting if needed) a sandbox; None when it was broken and removed."""
        if state == "running":
            return AcquireResult(self._inspect_info(cid), Outcome.REUSED_RUNNING, "attached")
        if state in ("exited", "created", "paused"):
            try:
                self._start(cid, unpause=state == "paused")
            except (FailedPrecondition, InvalidArgument, NotFound) as exc:
                # Another manager may have started (or removed) it meanwhile.
                try:
                    info = self._inspect_info(cid)
                except NotFound:
                    return None
                if info.state == "running":
                    return AcquireResult(info, Outcome.REUSED_RUNNING, "started concurrently")
                log.warning(
                    "start of a stopped sandbox failed; replacing it",
                    extra={"sandbox_id": cid, "state": info.state, "error": explain(exc)},
                )
                self.remove_now(cid)
                return None
            info = self._inspect_info(cid)
            if info.state == "running":
                return AcquireResult(info, Outcome.RESTARTED, f"started {state} sandbox")
        # restarting, removing, dead, or exited again right after start.
        self.remove_now(cid)
        return None

    def create_warm_member(
        self, profile: str, spec: ResolvedSpec, name: str, pool_size: int
    ) -> SandboxInfo:
        """Creates and starts a warm-pool member of ``profile`` in the slot ``name``.

        Raises:
            NameTaken: The slot holds a member already (another manager's).
            FailedPrecondition: The image is missing or the member does not stay running.
        """
        return self._create_started("", profile, spec, persist=True, name=name, pool_size=pool_size)

    def _create_started(
        self,
        task_id: str,
        profile: str,
        spec: ResolvedSpec,
        *,
        persist: bool,
        name: str,
        pool_size: int = 0,
    ) -> SandboxInfo:
        lbl = labels.sandbox_labels(
            deployment=self.deployment,
            profile=profile,
            task_id=task_id,
            persist=persist,
            owner=self.owner,
            config_hash=spec.config_hash,
            pool_size=pool_size,
        )
        keepalive = list(self.section.keepalive_command)
        with engine_call("containers.create", image=spec.image, name=name):
            host_config = self.api.create_host_config(**host_config_kwargs(spec, self.section))
            cid = self.api.create_container(
                spec.image,
                entrypoint=keepalive[:1],
                command=keepalive[1:],
                labels=lbl,
                name=name,
                host_config=host_config,
                environment=dict(spec.env),
                working_dir=spec.workdir or None,
                user=spec.user or None,
                detach=True,
            )["Id"]
        try:
            self._start(cid)
        except (FailedPrecondition, InvalidArgument, NotFound) as exc:
            # The engine answers a start it cannot do (a missing binary, a
            # runtime error) with 400 or 500: the state check below decides.
            log.warning(
                "start of a new sandbox failed", extra={"sandbox_id": cid, "error": explain(exc)}
            )
        info = self._inspect_info(cid)
        if info.state != "running":
            self.remove_now(cid)
            raise FailedPrecondition(
                f"sandbox from image {quote(spec.image)} does not stay running (state {info.state})"
            )
        return info

    def _start(self, cid: str, *, unpause: bool = False) -> None:
        with engine_call("containers.start", resource=f"sandbox {cid!r}", sandbox_id=cid):
            if unpause:
                self.api.unpause(cid)
            else:
                self.api.start(cid)

    def remove_now(self, cid: str) -> None:
        """Removes a sandbox now (forced); tolerates one already gone."""
        try:
            with engine_call("containers.remove", resource=f"sandbox {cid!r}", sandbox_id=cid):
                self.api.remove_container(cid, force=True, v=True)
        except NotFound:
            pass
        except FailedPrecondition as exc:
            # A cleanup thread (or another manager) is removing it already.
            if "already in progress" not in explain(exc):
                raise
        self.forget(cid)
