"""gRPC handlers of ``longshore.sandbox.v1.SandboxService`` on ``grpc.aio``: protos in,
domain calls, protos out.

Rules live in :mod:`.manager`, :mod:`.reaper`, :mod:`.policy` (what a spec may
ask for) and :mod:`.access` (who may use which sandbox, checked here before
any engine side effect); errors are typed service errors mapped to status
codes by the runtime's interceptor.

The handlers are coroutines; every Docker SDK call blocks, so it runs in one
bounded pool (``sandbox.max_workers`` threads), which therefore bounds the
engine calls in flight, Exec streams included (each holds a thread while it
waits for output). :mod:`.exec_stream` bridges an Exec's output to the stream
and kills the command of a caller that goes away. The file RPCs are a mixin
(:mod:`.server_files`, over :mod:`.files`) and run in the same pool: a
WriteFiles pool thread pulls the caller's messages (read a few ahead on the
loop) into the engine's upload, and a ReadFile pool thread reads the engine a
few chunks ahead of the caller. The session RPCs are a mixin too
(:mod:`.server_sessions`, over :mod:`.sessions`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from datetime import timedelta
from typing import Any, TypeVar

from longshore.sandbox.v1 import (
    sandbox_service_pb2,
    sandbox_service_pb2_grpc,
)

from services.runtime.aio_serving import AioService
from services.runtime.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.runtime.sandbox_tokens import SandboxGrant
from services.sandbox import convert, labels
from services.sandbox.access import SandboxAccess, short_id
from services.sandbox.exec_stream import ExecStream
from services.sandbox.hardening import resolve_spec
from services.sandbox.manager import SandboxManager
from services.sandbox.policy import check_image_allowed, check_snapshot_image, quote
from services.sandbox.reaper import Reaper
from services.sandbox.server_files import Context, FileRpcs, Transfer
from services.sandbox.server_lifecycle import LifecycleRpcs
from services.sandbox.server_pools import PoolRpcs
from services.sandbox.server_processes import ProcessRpcs
from services.sandbox.server_sessions import SessionRpcs

SERVICE_NAME = "longshore.sandbox.v1.SandboxService"
#: Threads that kill the commands of abandoned Execs (apart from the engine pool).
CANCEL_WORKERS = 4

T = TypeVar("T")


class SandboxServicer(
    FileRpcs,
    LifecycleRpcs,
    PoolRpcs,
    ProcessRpcs,
    SessionRpcs,
    sandbox_service_pb2_grpc.SandboxServiceServicer,
):
    """Implements the SandboxService contract over a :class:`SandboxManager`.

    Args:
        manager: The manager of this deployment's sandboxes.
        reaper: The orphan reaper.
        internal_token: The internal credential sandbox tokens are signed
            under; empty: no token verifies, so only operators may acquire,
            exec and release.
        max_workers: Threads of the blocking pool; ``sandbox.max_workers``
            by default.
    """

    def __init__(
        self,
        manager: SandboxManager,
        reaper: Reaper,
        *,
        internal_token: str = "",
        max_workers: int | None = None,
    ) -> None:
        self.manager = manager
        self.reaper = reaper
        self.access = SandboxAccess(internal_token, manager.deployment)
        self._pool = futures.ThreadPoolExecutor(
            max_workers=max_workers or manager.section.max_workers,
            thread_name_prefix="sandbox-engine",
        )
        # A cancel is what unblocks a reader that holds a pool thread, so it
        # must never wait in the pool's queue behind such readers.
        self._cancels = futures.ThreadPoolExecutor(
            max_workers=CANCEL_WORKERS, thread_name_prefix="sandbox-cancel"
        )
        # The Execs in flight. Added and removed on the loop, read by close()
        # on the main thread after the loop stopped: hence the lock.
        self._streams_lock = threading.Lock()
        self._streams: set[ExecStream] = set()
        # File transfers in flight, for the same reason: their pool threads
        # wait on the caller and must be told to stop if no finally runs.
        self._transfers: set[Transfer] = set()

    def close(self) -> None:
        """After the server drained: kills the commands of Execs still open, ends the pools.

        The drain cancels the calls still open after its grace, but their
        handlers' ``finally`` may never run once the loop stops; abandoning
        them here makes sure no command outlives the manager's shutdown.
        """
        with self._streams_lock:
            open_streams = list(self._streams)
        for stream in open_streams:
            stream.abandon()
        with self._streams_lock:
            transfers = list(self._transfers)
        for transfer in transfers:
            transfer.stop()
        self._cancels.shutdown(wait=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a blocking (engine) call in the pool; the loop serves other calls meanwhile."""
        loop = asyncio.get_running_loop()
        # run_in_executor does not carry context variables: copy them, so the
        # engine call's spans are children of this call's server span.
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._pool, call)

    async def AcquireSandbox(
        self, request: sandbox_service_pb2.AcquireSandboxRequest, context: Context
    ) -> sandbox_service_pb2.AcquireSandboxResponse:
        """See the proto."""
        # Who may ask comes first: a refused caller never reaches the engine.
        grant = self.access.grant(context)
        self.access.check_acquire(grant, request.task_id, request.profile, request.spec)
        terms = None
        if request.HasField("lease"):
            section = self.manager.section
            terms = convert.lease_from_proto(
                request.lease,
                max_seconds=section.max_lease_seconds,
                default_action=section.lease_expiry_action,
                field="lease.",
            )
        return await self._blocking(self._acquire, request, grant, terms)

    def _acquire(
        self,
        request: sandbox_service_pb2.AcquireSandboxRequest,
        grant: SandboxGrant | None,
        terms: tuple[timedelta, str] | None,
    ) -> sandbox_service_pb2.AcquireSandboxResponse:
        persist = (
            request.persist_across_processes
            if request.HasField("persist_across_processes")
            else True
        )
        if grant is not None and not persist:
            self._check_one_fresh_sandbox(request.task_id, request.profile)
        result = self.manager.acquire(
            request.task_id,
            request.profile,
            convert.checked_spec(request.spec),
            persist=persist,
        )
        cid = result.sandbox.sandbox_id
        lease = self.manager.leases.set(cid, *terms) if terms else self.manager.leases.get(cid)
        return convert.acquire_to_proto(result, lease)

    def _check_one_fresh_sandbox(self, task_id: str, profile: str) -> None:
        """Refuses a run's holder a second non-persistent sandbox while one is alive.

        A persistent acquire is get-or-create by key, so a holder can never
        have more than one; without this, a worker key could create fresh
        sandboxes in a loop under one token. Operators are not limited.
        """
        alive = [
            info
            for info in self.manager.list_sandboxes(task_id=task_id, profile=profile)
            if info.labels.get(labels.PERSIST) == "false"
            and info.state in ("created", "running", "paused", "restarting")
        ]
        if alive:
            raise ResourceExhausted(
                f"task {quote(task_id)} already has a non-persistent sandbox "
                f"{short_id(alive[0].sandbox_id)}; release it before acquiring another"
            )

    async def GetSandbox(
        self, request: sandbox_service_pb2.GetSandboxRequest, context: Context
    ) -> sandbox_service_pb2.GetSandboxResponse:
        """See the proto."""
        info = await self._blocking(self.manager.get, request.sandbox_id)
        return sandbox_service_pb2.GetSandboxResponse(
            sandbox=convert.sandbox_to_proto(info, self.manager.leases.get(info.sandbox_id))
        )

    async def ListSandboxes(
        self, request: sandbox_service_pb2.ListSandboxesRequest, context: Context
    ) -> sandbox_service_pb2.ListSandboxesResponse:
        """See the proto."""
        size = convert.page_size(request.page_size)
        cursor = convert.decode_page_token(request.page_token)
        states = convert.states_from_proto(list(request.states))
        infos = await self._blocking(
            self.manager.list_sandboxes,
            profile=request.profile,
            task_id=request.task_id,
            states=states,
            extra_labels=dict(request.labels),
        )
        if cursor is not None:
            created, last_id = cursor
            infos = [i for i in infos if (i.created_ns, i.sandbox_id) < (created, last_id)]
        page = infos[:size]
        token = convert.encode_page_token(page[-1]) if len(infos) > size else ""
        return sandbox_service_pb2.ListSandboxesResponse(
            sandboxes=[
                convert.sandbox_to_proto(i, self.manager.leases.get(i.sandbox_id)) for i in page
            ],
            next_page_token=token,
        )

    async def Exec(
        self, request: sandbox_service_pb2.ExecRequest, context: Context
    ) -> AsyncIterator[sandbox_service_pb2.ExecResponse]:
        """See the proto."""
        if not request.sandbox_id:
            raise InvalidArgument("sandbox_id: required")
        command = convert.exec_from_proto(request)
        sandbox_id = request.sandbox_id
        grant = self.access.grant(context)
        if grant is not None:
            # Checked on what the container is, then used by its full id, so
            # the command runs in exactly the sandbox whose labels were checked.
            info = await self._blocking(self.manager.identities.of, sandbox_id)
            self.access.check_sandbox(grant, info, exec_user=request.user)
            sandbox_id = info.sandbox_id
        stream = ExecStream(
            functools.partial(self.manager.exec, sandbox_id, command), self._pool, self._cancels
        )
        # Two ways a call ends early, both covered: the coroutine is cancelled
        # at an await (the finally below), or while the server writes a chunk,
        # where only the call's done callback sees it. After a normal end the
        # abandon does nothing.
        # (The stubs type the callback as a class of their own; any callable works.)
        context.add_done_callback(lambda _context: stream.abandon())  # type: ignore[arg-type]
        with self._streams_lock:
            self._streams.add(stream)
        try:
            while (event := await stream.next()) is not None:
                yield convert.exec_event_to_proto(event)
        finally:
            stream.abandon()
            with self._streams_lock:
                self._streams.discard(stream)

    async def ReleaseSandbox(
        self, request: sandbox_service_pb2.ReleaseSandboxRequest, context: Context
    ) -> sandbox_service_pb2.ReleaseSandboxResponse:
        """See the proto."""
        sandbox_id = request.sandbox_id
        grant = self.access.grant(context)
        if grant is not None:
            info = await self._blocking(self.manager.get, sandbox_id)
            self.access.check_sandbox(grant, info)
            sandbox_id = info.sandbox_id
        scheduled = await self._blocking(
            self.manager.release, sandbox_id, force_remove=request.force_remove
        )
        return sandbox_service_pb2.ReleaseSandboxResponse(removal_scheduled=scheduled)

    async def ReapOrphans(
        self, request: sandbox_service_pb2.ReapOrphansRequest, context: Context
    ) -> sandbox_service_pb2.ReapOrphansResponse:
        """See the proto."""
        self.access.require_operator(context, "ReapOrphans")
        max_age = convert.max_age_from_proto(request)
        report = await self._blocking(
            self.reaper.reap, max_age=max_age, profile=request.profile, dry_run=request.dry_run
        )
        if report.error:
            raise Unavailable(report.error)
        return convert.reap_to_proto(report)

    async def CheckSandboxSpec(
        self, request: sandbox_service_pb2.CheckSandboxSpecRequest, context: Context
    ) -> sandbox_service_pb2.CheckSandboxSpecResponse:
        """See the proto."""
        self.access.require_operator(context, "CheckSandboxSpec")
        # The very code an acquire runs, minus the engine (so no pool thread).
        resolved = resolve_spec(convert.checked_spec(request.spec), self.manager.section)
        check_snapshot_image(
            resolved.image, self.manager.snapshots.repository, self.manager.section
        )
        check_image_allowed(request.spec.image, list(request.allowed_images), self.manager.section)
        return sandbox_service_pb2.CheckSandboxSpecResponse(config_hash=resolved.config_hash)


def grpc_service(servicer: SandboxServicer) -> AioService:
    """The servicer as an :class:`AioService` for ``build_aio_server``/``serve_in_process``."""
    return AioService(
        SERVICE_NAME,
        lambda server: sandbox_service_pb2_grpc.add_SandboxServiceServicer_to_server(
            servicer, server
        ),
    )
