"""The sandbox manager: acquire, get, list, exec and release labelled sandboxes.

This is the only module (with its halves :mod:`.acquire_steps`, the
get-or-create of persistent sandboxes, :mod:`.execution` and :mod:`.files`) that talks to
the Docker engine. Sandboxes are found by their ``io.longshore.*`` labels and
scoped to one deployment.

Sandbox ids and names longer than 128 characters are refused before any
engine call, and messages quote at most 100 characters of any caller-supplied
value. While the engine probe (:mod:`.engine_health`) says the engine is
down, every call fails at once with UNAVAILABLE naming the engine.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, cast

import docker
from opentelemetry import trace
from opentelemetry.metrics import Meter

from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    quote,
)
from services.sandbox import labels
from services.sandbox.acquire_steps import AcquireSteps
from services.sandbox.cleanup import CleanupPool
from services.sandbox.docker_client import engine_call, explain, info_from_inspect, info_from_list
from services.sandbox.engine_health import EngineHealth
from services.sandbox.execution import ExecRun, validate
from services.sandbox.files import SandboxFiles
from services.sandbox.freeze_guard import FreezeGuard, GuardedApi
from services.sandbox.hardening import resolve_spec
from services.sandbox.identities import Identities
from services.sandbox.lifecycle.leases import Leases
from services.sandbox.lifecycle.pauses import Pauses
from services.sandbox.lifecycle.snapshots import Snapshots
from services.sandbox.metrics import SandboxMetrics
from services.sandbox.model import (
    AcquireResult,
    ExecCommand,
    ExecExit,
    Outcome,
    OutputChunk,
    ResolvedSpec,
    SandboxInfo,
    Spec,
)
from services.sandbox.owners import Liveness, current_owner
from services.sandbox.pools import WarmPools
from services.sandbox.processes import SandboxProcesses
from services.sandbox.reaper import Candidate
from services.sandbox.sessions import Sessions
from services.sandbox.settings import SandboxSection

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Clock = Callable[[], datetime]
#: Longest sandbox id or name a caller may pass (engine ids are 64 characters).
MAX_REF_CHARS = 128


def utcnow() -> datetime:
    """The wall clock, timezone-aware (the default clock)."""
    return datetime.now(UTC)


def check_ref(field_name: str, value: str) -> None:
    """Refuses an empty or over-long sandbox reference.

    Raises:
        InvalidArgument: Empty, or longer than 128 characters (never echoed whole).
    """
    if not value:
        raise InvalidArgument(f"{field_name}: required")
    if len(value) > MAX_REF_CHARS:
        raise InvalidArgument(f"{field_name}: at most {MAX_REF_CHARS} characters, got {len(value)}")


class SandboxManager(AcquireSteps):
    """Owns every container call of one deployment.

    Args:
        client: Docker client.
        section: The ``sandbox`` settings section.
        deployment: Deployment name (``io.longshore.deployment``).
        owner: Instance id for the ``io.longshore.owner`` label and exec
            markers; this process's id (see :mod:`.owners`) when omitted.
        clock: Wall clock, injectable for tests.
        meter: Where the manager's instruments are created (see :mod:`.metrics`).
        lease_timer: Whether a thread expires leases by itself (tests with a
            fake clock drive ``leases.expire_due`` instead).
    """

    def __init__(
        self,
        client: docker.DockerClient,
        section: SandboxSection,
        *,
        deployment: str,
        owner: str | None = None,
        clock: Clock = utcnow,
        meter: Meter | None = None,
        lease_timer: bool = True,
    ) -> None:
        #: The engine's low-level client, exec starts and freezes guarded
        #: against each other (see :mod:`.freeze_guard`).
        self.api: docker.APIClient = cast(docker.APIClient, GuardedApi(client.api, FreezeGuard()))
        self.section = section
        self.deployment = deployment
        self.clock = clock
        self.owner = owner or current_owner(self.inspect_or_none)
        self.liveness = Liveness(self.inspect_or_none)
        #: The engine probe; set by the wiring, consulted before every call.
        self.engine_health: EngineHealth | None = None
        self.metrics = SandboxMetrics(meter)
        self._dep_label = labels.sanitize(deployment)
        self._locks_guard = threading.Lock()
        self._key_locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}
        self._state_lock = threading.Lock()
        self._last_used: dict[str, datetime] = {}
        self._busy: Counter[str] = Counter()
        self._known: dict[str, str] = {}  # any id/name a caller used -> full id
        #: What access checks read of a sandbox a task has (see :mod:`.identities`).
        self.identities = Identities(self.get, self._known_id)
        self.cleanup = CleanupPool(section.cleanup_workers, on_failure=self._cleanup_failed)
        #: Files in sandboxes (the archive API; see :mod:`.files`).
        self.files = SandboxFiles(self)
        #: Pause and resume, snapshots and leases (see :mod:`.lifecycle`).
        self.pauses = Pauses(self)
        self.snapshots = Snapshots(self)
        self.leases = Leases(self, clock, timer=lease_timer)
        #: Background and interactive processes (see :mod:`.processes`).
        self.processes = SandboxProcesses(self)
        #: Warm pools (see :mod:`.pools`); the wiring starts their filler.
        self.pools = WarmPools(self)
        #: Persistent shell sessions (see :mod:`.sessions`).
        self.sessions = Sessions(self)

    # ---- acquire -------------------------------------------------------------------

    def acquire(
        self, task_id: str, profile: str, spec: Spec, *, persist: bool = True
    ) -> AcquireResult:
        """Returns a running sandbox for (task_id, profile).

        Raises:
            InvalidArgument: task_id, profile or a spec field is invalid.
            FailedPrecondition: The image does not exist on the engine.
            Unavailable: The engine is unreachable.
        """
        if not task_id.strip():
            raise InvalidArgument("task_id: required")
        if not profile.strip():
            raise InvalidArgument("profile: required")
        resolved = resolve_spec(spec, self.section)
        self.require_engine()
        self.snapshots.admit_image(resolved.image)
        if persist:
            with self._key_lock(task_id, profile):
                result = self._acquire_persistent(task_id, profile, resolved)
        else:
            name = labels.container_name(self.deployment, profile, task_id)
            name = f"{name}-{secrets.token_hex(4)}"
            info = self._create_started(task_id, profile, resolved, persist=False, name=name)
            result = AcquireResult(info, Outcome.CREATED, "persistence off: fresh sandbox")
        self.touch(result.sandbox.sandbox_id)
        # An acquire starts (or unpauses) what it returns.
        self.pauses.observe(result.sandbox.sandbox_id, result.sandbox.state)
        self.metrics.acquire(result.outcome.value)
        # Its first process should cost no exec (made in the background).
        self.processes.spares.fill_soon(result.sandbox.sandbox_id)
        log.info(
            "sandbox acquired",
            extra={
                "sandbox_id": result.sandbox.sandbox_id,
                "task_id": task_id,
                "profile": profile,
                "outcome": result.outcome.value,
                "reason": result.reason,
            },
        )
        return result

    def _warm_handout(
        self, task_id: str, profile: str, spec: ResolvedSpec, name: str
    ) -> AbstractContextManager[Callable[[], SandboxInfo | None] | None]:
        return self.pools.handout(task_id, profile, spec, name)

    # ---- get / list ----------------------------------------------------------------

    def _inspect(self, ref: str) -> dict[str, Any]:
        with engine_call("containers.inspect", resource=f"sandbox {quote(ref)}", sandbox_id=ref):
            return dict(self.api.inspect_container(ref))

    def inspect_or_none(self, ref: str) -> dict[str, Any] | None:
        """The engine's inspect of any container, or None when there is none."""
        try:
            return self._inspect(ref)
        except NotFound:
            return None

    def require_engine(self) -> None:
        """Fails fast while the engine probe says the engine is down.

        Raises:
            Unavailable: The last probe of the engine failed.
        """
        if self.engine_health is not None:
            self.engine_health.check()

    def _inspect_info(self, ref: str) -> SandboxInfo:
        return info_from_inspect(self._inspect(ref), self.last_used)

    def get(self, sandbox_id: str) -> SandboxInfo:
        """Returns one sandbox of this deployment by id, unique id prefix or name.

        Raises:
            InvalidArgument: Empty sandbox_id.
            NotFound: No such sandbox in this deployment.
        """
        return self.info_of(self.inspect_managed(sandbox_id))

    def inspect_managed(self, sandbox_id: str) -> dict[str, Any]:
        """The engine's inspect of one sandbox of this deployment.

        Raises:
            InvalidArgument: Empty sandbox_id.
            NotFound: No such sandbox in this deployment.
        """
        check_ref("sandbox_id", sandbox_id)
        self.require_engine()
        data = self._inspect(sandbox_id)
        lbl = (data.get("Config") or {}).get("Labels") or {}
        if lbl.get(labels.MANAGED) != "1" or lbl.get(labels.DEPLOYMENT) != self._dep_label:
            raise NotFound(f"sandbox {quote(sandbox_id)} not found")
        with self._state_lock:
            self._known[sandbox_id] = data["Id"]
        self.pauses.observe(data["Id"], str((data.get("State") or {}).get("Status", "")))
        return data

    def info_of(self, data: Mapping[str, Any]) -> SandboxInfo:
        """The domain record of an inspect."""
        return info_from_inspect(data, self.last_used)

    def info_of_row(self, row: Mapping[str, Any]) -> SandboxInfo:
        """The domain record of a row of the engine's container list."""
        return info_from_list(row, self.last_used)

    def _known_id(self, ref: str) -> str | None:
        with self._state_lock:
            return self._known.get(ref)

    def resolve_id(self, sandbox_id: str) -> str:
        """Full id of a sandbox of this deployment about to be used (cached: labels never change).

        This is the lookup every use of a running sandbox passes (Exec,
        sessions, processes): a sandbox believed paused is resumed here, so
        a pause is transparent to callers; a running one costs no engine call.

        Raises:
            InvalidArgument: Empty sandbox_id.
            NotFound: No such sandbox in this deployment.
            FailedPrecondition: A paused sandbox could not be resumed.
        """
        check_ref("sandbox_id", sandbox_id)
        with self._state_lock:
            known = self._known.get(sandbox_id)
        cid = known or self.get(sandbox_id).sandbox_id
        self.pauses.ensure_running(cid)
        return cid

    def list_sandboxes(
        self,
        *,
        profile: str = "",
        task_id: str = "",
        states: Sequence[str] = (),
        extra_labels: Mapping[str, str] | None = None,
    ) -> list[SandboxInfo]:
        """Lists this deployment's sandboxes, newest first, in one engine call."""
        label_filters = labels.deployment_filters(self.deployment, profile)
        label_filters += [f"{k}={v}" for k, v in (extra_labels or {}).items()]
        filters: dict[str, Any] = {"label": label_filters}
        if states:
            filters["status"] = list(states)
        self.require_engine()
        if task_id:
            # A warm member's task is in its name, not its labels: a second
            # list (of pool members) is filtered here by the name's task.
            task = labels.sanitize(task_id)
            by_label = {"label": [*label_filters, f"{labels.TASK_ID}={task}"]}
            members = {"label": [*label_filters, f"{labels.WARM}=1"]}
            rows = self._list_rows(filters | by_label, profile)
            rows += [
                r
                for r in self._list_rows(filters | members, profile)
                if labels.task_of(r.get("Labels") or {}, str((r.get("Names") or [""])[0])) == task
            ]
        else:
            rows = self._list_rows(filters, profile)
        unique = {str(r["Id"]): r for r in rows}
        infos = [info_from_list(r, self.last_used) for r in unique.values()]
        infos.sort(key=lambda i: (i.created_ns, i.sandbox_id), reverse=True)
        return infos

    def _list_rows(self, filters: dict[str, Any], profile: str) -> list[dict[str, Any]]:
        with engine_call("containers.list", profile=profile or None):
            return list(self.api.containers(all=True, filters=filters))

    # ---- exec ----------------------------------------------------------------------

    def exec(
        self,
        sandbox_id: str,
        command: ExecCommand,
        on_cancel: Callable[[Callable[[], None]], object] | None = None,
    ) -> Generator[OutputChunk | ExecExit, None, None]:
        """Runs a command; yields output chunks as produced, then one :class:`ExecExit`.

        ``on_cancel`` registers the run's cancel function (e.g. a gRPC
        context's ``add_callback``), so a caller that goes away kills the
        command even while it prints nothing.

        Raises:
            InvalidArgument: Empty sandbox_id or argv, negative timeout.
            NotFound: No such sandbox.
            FailedPrecondition: The sandbox is not running.
        """
        validate(command)
        self.require_engine()
        cid = self.resolve_id(sandbox_id)
        timeout = command.timeout_seconds or self.section.exec_timeout_seconds
        cap = command.max_output_bytes or self.section.exec_max_output_bytes
        run = ExecRun(
            self.api,
            cid,
            command,
            timeout=timeout,
            max_output=cap,
            metrics=self.metrics,
            owner=self.owner,
            restart=lambda reason: self.restart(cid, reason=reason),
            # A command frozen with its sandbox is stopped by resuming first:
            # the killer is itself an exec, which a paused sandbox refuses.
            resume=lambda: self.pauses.ensure_running(cid),
            on_paused=lambda: self.pauses.resume(cid),
        )
        if on_cancel is not None:
            on_cancel(run.cancel)
        self.begin_use(cid)
        try:
            # Busy first, then resume: an idle pause checks "not busy" under
            # the pauses lock, so it either saw this exec or paused before the
            # check below, which then resumes (see Pauses.pause_if_idle).
            self.pauses.ensure_running(cid)
            yield from run.events()
        finally:
            self.end_use(cid)

    # ---- release and cleanup -------------------------------------------------------

    def release(self, sandbox_id: str, *, force_remove: bool = False) -> bool:
        """Ends a use of a sandbox; returns whether a removal was scheduled.

        Raises:
            InvalidArgument: Empty sandbox_id.
            NotFound: No such sandbox in this deployment.
        """
        info = self.get(sandbox_id)
        persist = info.labels.get(labels.PERSIST) == "true"
        self.processes.spares.drop(info.sandbox_id)
        if persist and not force_remove:
            self.touch(info.sandbox_id)
            return False
        self.schedule_removal(info.sandbox_id, reason="released")
        return True

    def schedule_removal(self, cid: str, *, reason: str) -> None:
        """Stops (bounded) and removes a sandbox on a cleanup thread."""
        self.forget(cid)
        self.cleanup.submit(cid, lambda: self._stop_and_remove(cid, reason))

    def _stop_and_remove(self, cid: str, reason: str) -> None:
        grace = self.section.stop_timeout_seconds
        try:
            with engine_call("containers.stop", resource=f"sandbox {cid!r}", sandbox_id=cid):
                self.api.stop(cid, timeout=grace)
        except NotFound:
            log.info("cleanup: sandbox already gone", extra={"sandbox_id": cid})
            return
        except FailedPrecondition as exc:  # stop failed: rm -f still kills it
            log.warning("cleanup: stop failed", extra={"sandbox_id": cid, "error": explain(exc)})
        try:
            with engine_call("containers.remove", resource=f"sandbox {cid!r}", sandbox_id=cid):
                self.api.remove_container(cid, force=True, v=True)
        except NotFound:
            pass
        except FailedPrecondition as exc:
            if "already in progress" not in explain(exc):
                raise
        log.info("cleanup: sandbox removed", extra={"sandbox_id": cid, "reason": reason})

    def _cleanup_failed(self, cid: str, exc: BaseException) -> None:
        self.metrics.cleanup_failure()
        log.error("cleanup failed", extra={"sandbox_id": cid, "error": str(exc)})

    def close(self, drain_seconds: float | None = None) -> bool:
        """Drains outstanding cleanups (bounded); returns whether all finished."""
        timeout = self.section.cleanup_drain_seconds if drain_seconds is None else drain_seconds
        self.leases.close()
        self.processes.close()
        self.sessions.close_all()
        done = self.cleanup.close(timeout)
        log.info("cleanup drained", extra={"complete": done})
        return done

    # ---- usage bookkeeping ---------------------------------------------------------

    def touch(self, cid: str) -> None:
        """Records a use of a sandbox now."""
        with self._state_lock:
            self._last_used[cid] = self.clock()

    def last_used(self, cid: str) -> datetime | None:
        """When this manager last saw the sandbox used, if it did."""
        with self._state_lock:
            return self._last_used.get(cid)

    def begin_use(self, cid: str) -> None:
        """Counts a command (an Exec, a session's) running in the sandbox: it is busy."""
        self.touch(cid)
        with self._state_lock:
            self._busy[cid] += 1

    def end_use(self, cid: str) -> None:
        """Ends what :meth:`begin_use` counted."""
        with self._state_lock:
            self._busy[cid] -= 1
            if self._busy[cid] <= 0:
                del self._busy[cid]
        self.touch(cid)

    def is_busy(self, cid: str) -> bool:
        """Whether a command (Exec, session or process) runs in the sandbox through this manager."""
        with self._state_lock:
            if self._busy.get(cid, 0) > 0:
                return True
        return self.processes.table.running_in(cid) > 0

    def forget(self, cid: str) -> None:
        """Drops cached facts about a sandbox that is going away."""
        with self._state_lock:
            self._last_used.pop(cid, None)
            for ref in [r for r, full in self._known.items() if full == cid]:
                del self._known[ref]
        self.identities.forget(cid)
        self.pauses.forget(cid)
        self.leases.drop(cid)
        self.sessions.end_sandbox(cid, "the sandbox was removed")
        self.sessions.forget(cid)
        self.processes.spares.drop(cid)

    # ---- what the reaper needs -----------------------------------------------------

    def list_candidates(self, *, profile: str = "", status: str = "exited") -> list[Candidate]:
        """This deployment's sandboxes in one engine state, in one filtered call."""
        filters = {"label": labels.deployment_filters(self.deployment, profile), "status": status}
        with engine_call("containers.list", status=status):
            rows = self.api.containers(all=True, filters=filters)
        return [
            Candidate(
                sandbox_id=str(r["Id"]),
                name=str((r.get("Names") or [""])[0]).lstrip("/"),
                labels=dict(r.get("Labels") or {}),
            )
            for r in rows
        ]

    def container_state(self, cid: str) -> str:
        """The engine's state of a container (``running``, ``exited``, ...).

        Raises:
            NotFound: The container is gone.
        """
        return str((self._inspect(cid).get("State") or {}).get("Status", ""))

    def times(self, cid: str) -> tuple[str, str, str]:
        """(state, raw StartedAt, raw FinishedAt) of a container."""
        data = self._inspect(cid)
        state = data.get("State") or {}
        return (
            str(state.get("Status", "")),
            str(state.get("StartedAt", "")),
            str(state.get("FinishedAt", "")),
        )

    def remove_exited(self, cid: str) -> None:
        """Removes a stopped container; never forces, so a running one is refused."""
        with engine_call("containers.remove", resource=f"sandbox {cid!r}", sandbox_id=cid):
            self.api.remove_container(cid, v=True)
        self.forget(cid)

    def stop(self, cid: str) -> None:
        """Stops a container with the bounded grace period."""
        self.processes.spares.drop(cid)
        with engine_call("containers.stop", resource=f"sandbox {cid!r}", sandbox_id=cid):
            self.api.stop(cid, timeout=self.section.stop_timeout_seconds)

    def restart(self, cid: str, *, reason: str) -> None:
        """Stops (bounded grace) and starts a sandbox again: every process in it ends.

        The container keeps its id, name, labels and mounts, so a persistent
        sandbox is still the one its key finds.

        Raises:
            NotFound: The sandbox is gone.
            Unavailable: The engine is unreachable.
        """
        log.warning("restarting sandbox", extra={"sandbox_id": cid, "reason": reason})
        self.processes.spares.drop(cid)
        with engine_call("containers.restart", resource=f"sandbox {cid!r}", sandbox_id=cid):
            self.api.restart(cid, timeout=self.section.stop_timeout_seconds)

    def is_owner_dead(self, values: Mapping[str, str]) -> bool:
        """Whether the manager named by a sandbox's owner label is known to be dead."""
        owner = values.get(labels.OWNER, "")
        return owner != self.owner and self.liveness.is_dead(owner)

    def at_pids_limit(self, cid: str) -> bool:
        """Whether a sandbox runs as many processes as its pids limit allows."""
        limit = int((self._inspect(cid).get("HostConfig") or {}).get("PidsLimit") or 0)
        if limit <= 0:
            return False
        with engine_call("containers.top", resource=f"sandbox {cid!r}", sandbox_id=cid):
            rows = self.api.top(cid).get("Processes") or []
        return len(rows) >= limit

    def config_user(self, cid: str) -> str:
        """The user a sandbox's processes run as by default (``Config.User``; "" = image's)."""
        return str((self._inspect(cid).get("Config") or {}).get("User") or "")
