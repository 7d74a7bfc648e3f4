"""Kanban keeps the sandbox manager's warm pools in step with its profiles.

A profile's ``warm_pool_size`` asks the manager for that many warm sandboxes
of the profile's spec (``SandboxService.SetWarmPool``, called as a Longshore
service with the internal credential, so as an operator). A profile write
sets the pool *before* it commits, so a size or spec the manager refuses
refuses the write and nothing is stored; a write that then fails puts the
stored state back. A reconcile (at start and every
``kanban.warm_pool_sync_seconds``) sets every profile's pool from the
database and drains the manager's pools no profile asks for: a restarted
manager learns the specs again (env values are in no label), a missed
delete is caught up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import grpc
from longshore.sandbox.v1 import pool_pb2, sandbox_pb2, sandbox_service_pb2_grpc
from sqlalchemy import select

from services.kanban import convert
from services.kanban.db import Database
from services.kanban.models import Profile
from services.kanban.store import keys
from services.kanban.vocabulary import ExecutorKind
from services.runtime.errors import (
    InvalidArgument,
    OutOfRange,
    PermissionDenied,
    ServiceError,
    Unavailable,
)

#: Executors whose runs acquire sandboxes of the profile's spec, so a pool
#: serves them: the dispatcher's own runs, and external workers' (E2B creates
#: through the front door among them).
POOLED_EXECUTORS = frozenset({ExecutorKind.SANDBOX, ExecutorKind.EXTERNAL})

log = logging.getLogger(__name__)

#: Deadline of one SetWarmPool / ListWarmPools (the manager answers from memory).
CALL_TIMEOUT_SECONDS = 10.0
#: Longest wait between retries of a failed reconcile when no interval is set.
_RETRY_CAP_SECONDS = 30.0
_REFUSALS: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
}


def pool_spec(row: Profile) -> sandbox_pb2.SandboxSpec:
    """The spec a profile's members run: the profile's stored spec, env values included."""
    return convert.spec_proto(row.sandbox_spec or {})


class WarmPools:
    """SetWarmPool and the reconcile loop.

    Args:
        channel: A channel to the sandbox manager (with the internal credential).
        db: The database the profiles are read from.
        interval_seconds: Seconds between reconciles (0: only at start).
        timeout: Deadline of each call.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        db: Database,
        *,
        interval_seconds: float = 60.0,
        timeout: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        self._stub = sandbox_service_pb2_grpc.SandboxServiceStub(channel)
        self._db = db
        self._interval = interval_seconds
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, profile: str, spec: sandbox_pb2.SandboxSpec, size: int) -> None:
        """Sets a profile's pool on the manager (size 0 drains it).

        Raises:
            InvalidArgument: The manager refused a field (named ``warm_pool_size``
                or ``sandbox_spec.<field>``).
            PermissionDenied: The spec is beyond the manager's policy.
            OutOfRange: The size is over the manager's caps.
            Unavailable: The manager could not be reached or could not answer.
        """
        request = pool_pb2.SetWarmPoolRequest(profile=profile, spec=spec, size=size)
        try:
            self._stub.SetWarmPool(request, timeout=self._timeout)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            details = (err.details() if isinstance(err, grpc.Call) else None) or ""
            details = details.replace("size:", "profile.warm_pool_size:").replace(
                "spec.", "sandbox_spec."
            )
            refusal = _REFUSALS.get(code) if code is not None else None
            if refusal is not None:
                raise refusal(details[:300]) from None
            raise Unavailable(
                f"sandbox manager cannot set the warm pool of profile {profile!r}: "
                f"{code.name if code else 'unreachable'}"
            ) from None

    @contextlib.contextmanager
    def around_write(
        self,
        profile: str,
        size: int,
        executor: str,
        spec: sandbox_pb2.SandboxSpec,
        touched: bool,
    ) -> Iterator[None]:
        """Sets a profile's pool before its write; puts the stored one back if the write fails.

        Before the write, so a size or spec the manager refuses refuses the
        write and nothing is stored.

        Args:
            profile: The profile's name.
            size: Its ``warm_pool_size`` after the write.
            executor: Its executor after the write.
            spec: Its spec after the write (env values included).
            touched: Whether the write changes the pool at all (False: no call).

        Raises:
            InvalidArgument: A size for a profile that is not a sandbox profile,
                or what :meth:`set` raises.
        """
        if size and executor not in POOLED_EXECUTORS:
            raise InvalidArgument(
                "profile.warm_pool_size: only for the 'sandbox' and 'external' executors"
            )
        if not touched:
            yield
            return
        self.set(profile, spec, size)
        try:
            yield
        except BaseException:
            self.resync(profile)
            raise

    def resync(self, profile: str) -> None:
        """Sets one profile's pool from what the database holds (best effort)."""
        with self._db.read() as s:
            row = keys.by_key(s, Profile, profile)
            wanted = (pool_spec(row), row.warm_pool_size) if row is not None else None
        try:
            if wanted is None:
                self.set(profile, sandbox_pb2.SandboxSpec(), 0)
            else:
                self.set(profile, *wanted)
        except ServiceError as exc:
            log.warning("warm pool resync failed", extra={"profile": profile, "error": str(exc)})

    def reconcile(self) -> int:
        """Sets every profile's pool, drains pools no profile wants; returns the calls failed."""
        with self._db.read() as s:
            rows = s.scalars(select(Profile)).all()
            wanted = {
                r.name: (pool_spec(r), r.warm_pool_size)
                for r in rows
                if r.warm_pool_size > 0 and r.executor in POOLED_EXECUTORS
            }
        try:
            listed = self._stub.ListWarmPools(
                pool_pb2.ListWarmPoolsRequest(), timeout=self._timeout
            )
            current = {p.profile: p.size for p in listed.pools}
        except grpc.RpcError:
            current = {}
        unwanted = [n for n, size in current.items() if n not in wanted and size > 0]
        calls = [(n, spec, size) for n, (spec, size) in wanted.items()]
        calls += [(n, sandbox_pb2.SandboxSpec(), 0) for n in unwanted]
        failed = 0
        for name, spec, size in calls:
            try:
                self.set(name, spec, size)
            except ServiceError as exc:
                failed += 1
                log.warning("warm pool sync failed", extra={"profile": name, "error": str(exc)})
        return failed

    def start(self) -> None:
        """Reconciles now and then every interval, on a thread."""
        self._thread = threading.Thread(target=self._run, name="kanban-warm-pools", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the loop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                failed = self.reconcile()
            except Exception:  # the loop must outlive one bad round
                log.exception("warm pool reconcile failed")
                failed = 1
            # A manager still starting: retry soon (bounded backoff), then settle.
            if failed:
                delay = min(delay * 2, self._interval or _RETRY_CAP_SECONDS)
            elif self._interval <= 0:
                return
            else:
                delay = self._interval
            if self._stop.wait(delay):
                return
