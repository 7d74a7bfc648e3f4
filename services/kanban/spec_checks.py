"""Kanban's client of ``SandboxService.CheckSandboxSpec``: profiles' specs are
validated by the sandbox manager when they are written.

The sandbox manager owns the spec rules and the host policy (allowed host
paths and capabilities), so kanban asks it rather than repeating them: a spec
that could never run is refused when the operator writes it, not at spawn
time. If the manager cannot be reached the write is refused too (UNAVAILABLE)
rather than storing a spec nobody checked.

Task writes never call it (issue 11: creating tasks must not depend on the
sandbox manager being up); a task's image and env names are checked locally.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import grpc
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2, sandbox_service_pb2_grpc

from services.runtime.errors import InvalidArgument, PermissionDenied, Unavailable

#: Deadline of one check; the manager validates without touching the engine.
CHECK_TIMEOUT_SECONDS = 5.0
_SPEC_FIELD = re.compile(r"(?<![\w.])spec\.")
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _renamed(details: str) -> str:
    """The manager names fields ``spec.<field>``; kanban's callers wrote ``sandbox_spec``."""
    return _SPEC_FIELD.sub("sandbox_spec.", details)


class SpecChecks:
    """Validates sandbox specs on the sandbox manager.

    Args:
        channel: A channel to the sandbox manager (carrying the internal
            credential, as every kanban → sandbox channel does). Calls carry
            no principal: kanban asks as a service, and the policy checked is
            the manager's, the same for every caller.
        timeout: Deadline of each check.
    """

    def __init__(self, channel: grpc.Channel, *, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        self._stub = sandbox_service_pb2_grpc.SandboxServiceStub(channel)
        self._timeout = timeout

    def check(self, spec: sandbox_pb2.SandboxSpec, allowed_images: Sequence[str]) -> str:
        """Validate ``spec`` (env values included) and its image allowlist.

        Args:
            spec: The spec as it would be stored.
            allowed_images: Images a task may name; the spec's image is added.

        Returns:
            The config hash a sandbox of the spec would carry.

        Raises:
            InvalidArgument: A malformed field, named ``sandbox_spec.<field>``.
            PermissionDenied: A field beyond the manager's policy.
            Unavailable: The manager could not be reached, or could not answer.
        """
        request = sandbox_service_pb2.CheckSandboxSpecRequest(
            spec=spec, allowed_images=[spec.image, *allowed_images] if spec.image else []
        )
        try:
            response = self._stub.CheckSandboxSpec(request, timeout=self._timeout)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            details = (err.details() if isinstance(err, grpc.Call) else None) or ""
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(_renamed(details)) from None
            if code is grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(_renamed(details)) from None
            if code in _UNREACHABLE or code is None:
                raise Unavailable(
                    "sandbox manager unreachable: cannot validate sandbox_spec"
                ) from None
            # UNIMPLEMENTED (an older manager), UNAUTHENTICATED (a credential
            # mismatch) and the like: nothing was validated, so nothing is written.
            raise Unavailable(
                f"sandbox manager cannot validate sandbox_spec: {code.name}: {details[:200]}"
            ) from None
        return str(response.config_hash)
