"""The pause, resume, snapshot and lease RPCs of SandboxService.

A mixin of :class:`~services.sandbox.server.SandboxServicer`, like
:mod:`.server_files`: access is Exec's (the sandbox token of the sandbox's
task, or an operator), checked on the inspected sandbox before any engine
side effect, then the :mod:`.lifecycle` calls run in the servicer's blocking
pool. ListSnapshots is a read (the gateway asks for ``read``);
DeleteSnapshot is for operators.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from longshore.sandbox.v1 import lifecycle_pb2, sandbox_pb2

from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.sandbox import convert
from services.sandbox.access import SandboxAccess, short_id
from services.sandbox.manager import SandboxManager
from services.sandbox.model import SandboxInfo
from services.sandbox.server_files import Context

T = TypeVar("T")
#: Longest profile name ListSnapshots filters by (the manager's reference bound).
MAX_PROFILE_CHARS = 128


class LifecycleRpcs:
    """Mixin for :class:`~services.sandbox.server.SandboxServicer`: pause, snapshots, leases."""

    manager: SandboxManager
    access: SandboxAccess

    if TYPE_CHECKING:
        # The servicer's pool runner (defined there, shared with the other RPCs).
        async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def _lifecycle_target(self, sandbox_id: str, context: Context) -> SandboxInfo:
        """The sandbox a call acts on, after Exec's access check (the grant before the engine)."""
        grant = self.access.grant(context)
        info = await self._blocking(self.manager.get, sandbox_id)
        self.access.check_sandbox(grant, info)
        return info

    def _row(self, info: SandboxInfo) -> sandbox_pb2.Sandbox:
        return convert.sandbox_to_proto(info, self.manager.leases.get(info.sandbox_id))

    async def PauseSandbox(
        self, request: lifecycle_pb2.PauseSandboxRequest, context: Context
    ) -> lifecycle_pb2.PauseSandboxResponse:
        """See the proto."""
        info = await self._lifecycle_target(request.sandbox_id, context)
        if info.state != "paused":
            if info.state != "running":
                raise FailedPrecondition(
                    f"sandbox {short_id(info.sandbox_id)} is not running ({info.state}); "
                    "only a running sandbox can be paused"
                )
            await self._blocking(self.manager.pauses.pause, info.sandbox_id)
            info = dataclasses.replace(info, state="paused")
        return lifecycle_pb2.PauseSandboxResponse(sandbox=self._row(info))

    async def ResumeSandbox(
        self, request: lifecycle_pb2.ResumeSandboxRequest, context: Context
    ) -> lifecycle_pb2.ResumeSandboxResponse:
        """See the proto."""
        info = await self._lifecycle_target(request.sandbox_id, context)
        if info.state != "running":
            if info.state != "paused":
                raise FailedPrecondition(
                    f"sandbox {short_id(info.sandbox_id)} is {info.state}, not paused; "
                    "AcquireSandbox starts a stopped sandbox"
                )
            await self._blocking(self.manager.pauses.resume, info.sandbox_id)
            info = dataclasses.replace(info, state="running")
        return lifecycle_pb2.ResumeSandboxResponse(sandbox=self._row(info))

    async def SnapshotSandbox(
        self, request: lifecycle_pb2.SnapshotSandboxRequest, context: Context
    ) -> lifecycle_pb2.SnapshotSandboxResponse:
        """See the proto."""
        info = await self._lifecycle_target(request.sandbox_id, context)
        snapshot = await self._blocking(self.manager.snapshots.take, info.sandbox_id)
        return lifecycle_pb2.SnapshotSandboxResponse(snapshot=convert.snapshot_to_proto(snapshot))

    async def ListSnapshots(
        self, request: lifecycle_pb2.ListSnapshotsRequest, context: Context
    ) -> lifecycle_pb2.ListSnapshotsResponse:
        """See the proto."""
        if len(request.profile) > MAX_PROFILE_CHARS:
            raise InvalidArgument(
                f"profile: at most {MAX_PROFILE_CHARS} characters, got {len(request.profile)}"
            )
        snapshots = await self._blocking(self.manager.snapshots.list_snapshots, request.profile)
        return lifecycle_pb2.ListSnapshotsResponse(
            snapshots=[convert.snapshot_to_proto(s) for s in snapshots]
        )

    async def DeleteSnapshot(
        self, request: lifecycle_pb2.DeleteSnapshotRequest, context: Context
    ) -> lifecycle_pb2.DeleteSnapshotResponse:
        """See the proto."""
        self.access.require_operator(context, "DeleteSnapshot")
        await self._blocking(self.manager.snapshots.delete, request.image)
        return lifecycle_pb2.DeleteSnapshotResponse()

    async def SetSandboxLease(
        self, request: lifecycle_pb2.SetSandboxLeaseRequest, context: Context
    ) -> lifecycle_pb2.SetSandboxLeaseResponse:
        """See the proto."""
        # Bad input is refused before the engine (and before access, which
        # needs the engine's inspect): it is wrong whoever asks.
        section = self.manager.section
        ttl, action = convert.lease_from_proto(
            request,
            max_seconds=section.max_lease_seconds,
            default_action=section.lease_expiry_action,
        )
        info = await self._lifecycle_target(request.sandbox_id, context)
        if info.state in ("removing", "dead"):
            raise FailedPrecondition(
                f"sandbox {short_id(info.sandbox_id)} is {info.state}; it cannot hold a lease"
            )
        lease = self.manager.leases.set(info.sandbox_id, ttl, action)
        return lifecycle_pb2.SetSandboxLeaseResponse(sandbox=convert.sandbox_to_proto(info, lease))
