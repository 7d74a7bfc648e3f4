"""Warm pools: started sandboxes of a profile's spec, handed to new tasks by a rename.

A pool is ``size`` members, each a started container in a *slot*: its name is
:func:`labels.pool_member_name` of (deployment, profile, config hash, slot),
so the engine's name uniqueness caps a pool at ``size`` even when two
managers of one deployment fill it. A member carries the ordinary labels
(task-id ``unknown``) plus ``io.longshore.warm``/``pool``; labels never change, so a
task takes a member by renaming it from its slot name to the task's key name
(:func:`labels.container_name`): the slot is free for a refill at once, a
cold create of that key loses the name race to it and adopts it, and a later
get-or-create of the task, in any process, finds it by that name. The task
is read back from the name (:func:`labels.task_of`) wherever it matters.
Only a process that holds a member exclusively renames or removes it
(:mod:`.claims`), so a member never reaches two tasks.

The filler (one thread; ``sandbox.warm_fill_concurrency`` creates at once)
wakes on every change (a handout's :data:`HANDOUT_REFILL_DELAY_SECONDS`
later) and every ``sandbox.warm_fill_interval_seconds``: each
round drains what no pool wants (:func:`members.verdict`) and fills free
slots; a create that fails (a missing image) sets the pool's ``reason`` and
backs off. A restarted manager re-adopts the members it finds: their pool is
known again (size from their labels) and hands them out, and refills once
``SetWarmPool`` gives the spec again (env values are in no label; kanban
sends it at start and on every profile change). See docs/sandbox-pools.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from services.runtime.errors import InvalidArgument, NotFound, OutOfRange, ServiceError
from services.sandbox import labels
from services.sandbox.docker_client import NameTaken, engine_call, explain
from services.sandbox.hardening import resolve_spec
from services.sandbox.model import ResolvedSpec, SandboxInfo, Spec, WarmPool
from services.sandbox.pools.claims import Claims
from services.sandbox.pools.members import Member, Pool, env_fits, member_of, slot_names, verdict

if TYPE_CHECKING:
    from services.sandbox.manager import SandboxManager

log = logging.getLogger(__name__)

#: Longest profile name a pool may have (as AcquireSandbox's sandbox references).
MAX_PROFILE_CHARS = 128
#: Longest a pool's reason is kept (the proto's bound).
MAX_REASON_CHARS = 200
_MAX_BACKOFF_SECONDS = 60.0
#: Threads that inspect members beside their handout's rename (one per take at a time).
_INSPECT_WORKERS = 4
#: How long after a handout its slot's refill starts (see ``_refill_later``).
HANDOUT_REFILL_DELAY_SECONDS = 0.25
_RESTART_REASON = "spec unknown since the manager started: refills after SetWarmPool"

__all__ = ["MAX_PROFILE_CHARS", "Member", "WarmPools", "verdict"]


class WarmPools:
    """The warm pools of one manager: settings, handout, drain and the filler thread.

    Args:
        manager: The manager (the only module that talks to Docker).
        monotonic: Clock of the backoff, injectable for tests.
    """

    def __init__(
        self, manager: SandboxManager, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._manager = manager
        self._section = manager.section
        self._monotonic = monotonic
        self._claims = Claims(manager)
        self._own = labels.sanitize(manager.owner)
        # Guards _pools and every Pool in it: the RPCs, the handout and the
        # filler's workers all read and change them. Never held across an
        # engine call.
        self._lock = threading.Lock()
        self._pools: dict[str, Pool] = {}
        self._wake = threading.Event()
        # One delayed wake at a time: a round fills every free slot anyway.
        self._refill_guard = threading.Lock()
        self._refill_pending = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Inspects an own member beside its handout's rename (see ``_hand``).
        self._inspects = ThreadPoolExecutor(
            max_workers=_INSPECT_WORKERS, thread_name_prefix="sandbox-warm-inspect"
        )
        self._creates = ThreadPoolExecutor(
            max_workers=self._section.warm_fill_concurrency,
            thread_name_prefix="sandbox-warm-fill",
        )

    # ---- settings --------------------------------------------------------------

    def set_pool(self, profile: str, spec: Spec, size: int) -> WarmPool:
        """Sets (size 0: drains) a profile's pool; the filler does the rest.

        Raises:
            InvalidArgument: A bad profile or spec field.
            PermissionDenied: A spec field beyond the policy.
            OutOfRange: ``size`` negative, over ``sandbox.max_warm_per_pool``, or
                all pools together over ``sandbox.max_warm_total``.
        """
        if not profile.strip():
            raise InvalidArgument("profile: required")
        if len(profile) > MAX_PROFILE_CHARS:
            raise InvalidArgument(f"profile: at most {MAX_PROFILE_CHARS} characters")
        per_pool, total = self._section.max_warm_per_pool, self._section.max_warm_total
        if not 0 <= size <= per_pool:
            raise OutOfRange(f"size: {size} is outside 0 to sandbox.max_warm_per_pool ({per_pool})")
        # The same admission as an acquire's: what a member may be is policy.
        resolved = resolve_spec(spec, self._section)
        self._manager.require_engine()
        self._manager.snapshots.admit_image(resolved.image)
        key = labels.sanitize(profile)
        with self._lock:
            others = sum(p.size for k, p in self._pools.items() if k != key)
            if others + size > total:
                raise OutOfRange(
                    f"size: {size} would make {others + size} warm sandboxes in all pools, "
                    f"over sandbox.max_warm_total ({total})"
                )
            old = self._pools.get(key)
            pool = Pool(profile, key, size, resolved.config_hash, resolved.image, resolved)
            if old is not None and old.config_hash == pool.config_hash:
                # Same slots: creates under way still count, a failing image still backs off.
                pool.starting, pool.failures, pool.retry_at = (
                    old.starting,
                    old.failures,
                    old.retry_at,
                )
                pool.reason = "" if old.reason == _RESTART_REASON else old.reason
            self._pools[key] = pool
        log.info(
            "warm pool set",
            extra={"profile": profile, "size": size, "config_hash": resolved.config_hash},
        )
        self._wake.set()
        # From the pool set here: a drained size-0 pool may already be gone.
        return self._view_of(pool, self._members(key))

    def list_pools(self, profile: str = "") -> list[WarmPool]:
        """This manager's pools (one engine list call), by profile."""
        key = labels.sanitize(profile) if profile else ""
        members = self._members(key)
        with self._lock:
            pools = [p for k, p in sorted(self._pools.items()) if not key or k == key]
        return [self._view_of(pool, members) for pool in pools]

    def _view_of(self, pool: Pool, members: list[Member]) -> WarmPool:
        with self._lock:
            slots = slot_names(self._manager.deployment, pool)
            ready = sum(1 for m in members if m.name in slots and m.state == "running")
            return WarmPool(
                profile=pool.profile,
                config_hash=pool.config_hash,
                size=pool.size,
                ready=ready,
                starting=len(pool.starting),
                image=pool.image,
                reason=pool.reason[:MAX_REASON_CHARS],
            )

    # ---- handout ---------------------------------------------------------------

    @contextlib.contextmanager
    def handout(
        self, task_id: str, profile: str, spec: ResolvedSpec, name: str
    ) -> Iterator[Callable[[], SandboxInfo | None] | None]:
        """Holds the pool for an acquire's probe; yields its take (None: no pool fits).

        The pool's lock is held for the whole block: no thread of this
        process renames one of its members meanwhile, so the names the take
        lists stay current until it renames one of them.

        The take hands a ready member of the spec to the task by renaming it
        to ``name`` and returns it (None when no member fits); it raises
        :class:`NameTaken` when ``name`` exists already (a sandbox of the key
        the probe missed): the caller then probes the name and adopts it.
        """
        key = labels.sanitize(profile)
        with self._lock:
            pool = self._pools.get(key)
            fits = pool is not None and pool.size > 0 and pool.config_hash == spec.config_hash
            if pool is None or not fits:
                slots: dict[str, int] = {}
            else:
                slots = slot_names(self._manager.deployment, pool)
            # Members made from the pool's spec run its env: no inspect needed;
            # an acquire asking for other env values (same names, same hash)
            # is created cold rather than spending members it cannot use.
            known = pool is not None and pool.spec is not None and pool.spec.env == spec.env
            if pool is not None and pool.spec is not None and not known:
                slots = {}
        if not slots:
            yield None
            return
        filters = {
            "label": [
                *labels.pool_filters(self._manager.deployment, key),
                f"{labels.CONFIG_HASH}={spec.config_hash}",
            ],
            "status": "running",
        }

        def take() -> SandboxInfo | None:
            with engine_call("containers.list", profile=profile):
                rows = list(self._manager.api.containers(filters=filters))
            for row in rows:
                member = member_of(row)
                if member.name not in slots:
                    continue
                if (info := self._hand(member, row, name, spec, known_env=known)) is not None:
                    self._refill_later()  # the slot is free
                    log.info(
                        "warm member taken",
                        extra={"sandbox_id": info.sandbox_id, "task_id": task_id},
                    )
                    return info
            return None

        with self._claims.lock(key):
            yield take

    def _inspect_or_none(self, cid: str) -> dict[str, Any] | None:
        """The manager's inspect (which remembers the id); None when it cannot be had.

        A member gone meanwhile or an engine that fails this one call costs
        the handout nothing: it answers with the list row, as it did before
        the inspect ran beside the rename.
        """
        try:
            return self._manager.inspect_managed(cid)
        except ServiceError:
            return None

    def _refill_later(self) -> None:
        """Wakes the filler :data:`HANDOUT_REFILL_DELAY_SECONDS` from now.

        A refill is a container create and start, the heaviest engine work
        there is (~0.3 s of engine and runtime CPU here): begun at the
        handout, it lands on the handed-out sandbox's first commands, which
        are what its caller waits for (an E2B create's first ``run("true")``
        took 39 ms beside it, 20 ms without).
        """
        with self._refill_guard:
            if self._refill_pending:
                return
            self._refill_pending = True
        timer = threading.Timer(HANDOUT_REFILL_DELAY_SECONDS, self._refill_now)
        timer.daemon = True
        timer.start()

    def _refill_now(self) -> None:
        with self._refill_guard:
            self._refill_pending = False
        self._wake.set()

    def _hand(
        self,
        member: Member,
        row: Mapping[str, Any],
        name: str,
        spec: ResolvedSpec,
        *,
        known_env: bool,
    ) -> SandboxInfo | None:
        with self._claims.hold(member) as held:
            if not held:
                return None
            own = known_env and member.labels.get(labels.OWNER) == self._own
            # An own member is inspected beside the rename (only its name
            # changes): the task's first calls then find what their access
            # check reads kept (see services.sandbox.identities), at no wait.
            context = contextvars.copy_context()  # the inspect's span joins the acquire's trace
            inspected = (
                self._inspects.submit(context.run, self._inspect_or_none, member.sandbox_id)
                if own
                else None
            )
            try:
                with engine_call("containers.rename", resource=f"sandbox {member.name!r}"):
                    self._manager.api.rename(member.sandbox_id, name)
            except NotFound:
                return None  # drained meanwhile
            if inspected is not None:
                data = inspected.result()
                if data is not None:
                    info = dataclasses.replace(self._manager.info_of(data), name=name)
                    self._manager.identities.keep(info)
                    return info
                # The list row (made under the pool's lock) is current but the name.
                return self._manager.info_of_row({**row, "Names": [f"/{name}"]})
            data = self._manager.inspect_managed(member.sandbox_id)
            if env_fits(data, spec.env):
                return self._manager.info_of(data)
            # Same hash (env names) but other env values: not this task's. It
            # is held, so nobody else can be using it: remove it at once (the
            # key name must be free again) and try the next.
            log.info("warm member env differs; removed", extra={"sandbox_id": member.sandbox_id})
            self._manager.remove_now(member.sandbox_id)
            return None

    # ---- drain -----------------------------------------------------------------

    def drain(self) -> list[tuple[str, str]]:
        """Removes unclaimed members no pool wants; returns (sandbox_id, reason) of each."""
        by_pool: dict[str, list[Member]] = {}
        for m in self._members():
            if m.unclaimed:
                by_pool.setdefault(m.profile_label, []).append(m)
        removed: list[tuple[str, str]] = []
        for key, listed in list(by_pool.items()):
            # Judged first without the pool's lock, so a round with nothing
            # to drain (the usual one) never holds up the pool's handouts.
            if any(self._verdict(key, m) for m in listed):
                with self._claims.lock(key):
                    # Listed again under the lock: a take of this process may
                    # have renamed a member since the first list.
                    current = [m for m in self._members(key) if m.unclaimed]
                    by_pool[key] = current
                    for m in current:
                        reason = self._verdict(key, m)
                        if reason and self._remove(m):
                            log.info("warm member drained", extra={"sandbox_id": m.sandbox_id})
                            removed.append((m.sandbox_id, reason))
        gone = {sid for sid, _ in removed}
        left = {m.profile_label for ms in by_pool.values() for m in ms if m.sandbox_id not in gone}
        with self._lock:
            # A drained pool is forgotten once none of its members is left.
            for key in [k for k, p in self._pools.items() if p.size == 0 and not p.starting]:
                if key not in left:
                    del self._pools[key]
        return removed

    def _verdict(self, key: str, member: Member) -> str:
        with self._lock:
            pool = self._pools.get(key)
            slots = slot_names(self._manager.deployment, pool) if pool is not None else {}
        return verdict(member, pool, slots, self._manager.is_owner_dead(member.labels))

    def _remove(self, member: Member) -> bool:
        with self._claims.hold(member) as held:
            if held:
                # Under the pool's lock no take renames it first (own member),
                # and a frozen one no other contender holds (a dead manager's).
                self._manager.remove_now(member.sandbox_id)
            return held

    # ---- the filler ------------------------------------------------------------

    def start(self) -> None:
        """Re-adopts the members on the engine, then starts the filler thread."""
        self.adopt()
        self._thread = threading.Thread(target=self._run, name="sandbox-warm-pools", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the filler (members stay for the next manager to re-adopt)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._creates.shutdown(wait=False, cancel_futures=True)
        self._inspects.shutdown(wait=False, cancel_futures=True)

    def adopt(self) -> int:
        """Knows again the pools whose unclaimed members are on the engine; returns how many."""
        try:
            members = self._members()
        except ServiceError as exc:
            log.warning("warm pools: adopt failed", extra={"error": explain(exc)})
            return 0
        adopted = 0
        with self._lock:
            for m in members:
                key = m.profile_label
                if not m.unclaimed or not key or key in self._pools:
                    continue
                left = self._section.max_warm_total - sum(p.size for p in self._pools.values())
                size = min(int(m.labels.get(labels.POOL_SIZE, "0") or 0), left)
                if size <= 0:
                    continue
                config_hash = m.labels.get(labels.CONFIG_HASH, "")
                # The label is the sanitized profile: for a plain name, the name.
                pool = Pool(key, key, size, config_hash, m.image, None, reason=_RESTART_REASON)
                self._pools[key] = pool
                adopted += 1
        if adopted:
            log.info("warm pools adopted", extra={"pools": adopted})
        return adopted

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.drain()
                self._fill()
            except Exception:  # the filler must outlive one bad round
                log.exception("warm pools: round failed")
            self._wake.wait(self._section.warm_fill_interval_seconds)

    def _fill(self) -> None:
        taken = {m.name for m in self._members()}
        now = self._monotonic()
        jobs: list[tuple[Pool, int, str]] = []
        with self._lock:
            for pool in self._pools.values():
                if pool.spec is None or pool.size == 0 or now < pool.retry_at:
                    continue
                for name, slot in slot_names(self._manager.deployment, pool).items():
                    if name not in taken and slot not in pool.starting:
                        pool.starting.add(slot)
                        jobs.append((pool, slot, name))
        for pool, slot, name in jobs:
            self._creates.submit(self._create, pool, slot, name)

    def _create(self, pool: Pool, slot: int, name: str) -> None:
        spec = pool.spec
        try:
            if spec is None:
                return
            info = self._manager.create_warm_member(pool.profile, spec, name, pool.size)
        except NameTaken:
            pass  # another manager filled this slot
        except ServiceError as exc:
            self._failed(pool, explain(exc))
        except Exception as exc:  # a worker must never die silently
            log.exception("warm member create failed")
            self._failed(pool, f"create failed: {exc}")
        else:
            log.info("warm member ready", extra={"sandbox_id": info.sandbox_id, "slot": slot})
            # The task that takes it finds its first process's exec already started.
            self._manager.processes.spares.fill_soon(info.sandbox_id)
            with self._lock:
                pool.reason, pool.failures, pool.retry_at = "", 0, 0.0
        finally:
            with self._lock:
                pool.starting.discard(slot)
            self._wake.set()

    def _failed(self, pool: Pool, reason: str) -> None:
        with self._lock:
            pool.failures += 1
            delay = min(_MAX_BACKOFF_SECONDS, 0.5 * 2**pool.failures)
            pool.retry_at = self._monotonic() + delay
            pool.reason = reason[:MAX_REASON_CHARS]
        log.warning(
            "warm member create failed",
            extra={"profile": pool.profile, "reason": reason, "retry_in": delay},
        )

    def _members(self, key: str = "") -> list[Member]:
        """The members on the engine, of one pool (by its key) or of all."""
        filters = {"label": labels.pool_filters(self._manager.deployment, key)}
        with engine_call("containers.list", profile=key or None):
            rows = self._manager.api.containers(all=True, filters=filters)
        # The filter asks for io.longshore.warm=1; the check is the one rule.
        return [m for m in map(member_of, rows) if labels.is_pool_member(m.labels)]
