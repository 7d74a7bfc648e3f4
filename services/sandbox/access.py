"""Who may use which sandbox: operators any, everyone else only its own run's.

A call without a principal comes from another Longshore service and, like an
``admin`` key, is an operator (:class:`services.runtime.callers.Caller`).
Every other caller proves with a sandbox token (metadata
``longshore-sandbox-token``, minted by kanban at ``ClaimTask`` and renewed by
``Heartbeat``) that it holds the live run of the sandbox's task. The servicer
asks here before any engine side effect; a refusal is PERMISSION_DENIED
naming what was refused, never echoing the token.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from longshore.sandbox.v1 import sandbox_pb2

from services.runtime.callers import Caller, caller_from_metadata
from services.runtime.errors import PermissionDenied
from services.runtime.interceptors import CallMetadata, metadata_value
from services.runtime.sandbox_tokens import (
    SANDBOX_TOKEN_KEY,
    SandboxGrant,
    SandboxTokens,
    spec_digest,
)
from services.sandbox import labels
from services.sandbox.model import SandboxInfo
from services.sandbox.policy import quote


def short_id(sandbox_id: str) -> str:
    """The first 12 characters of a sandbox id, as messages show it."""
    return sandbox_id if len(sandbox_id) <= 12 else sandbox_id[:12] + "…"


class SandboxAccess:
    """Decides, per call, whether the caller may act on a sandbox.

    Args:
        internal_token: The internal credential the tokens are signed under;
            empty means no token can be verified, so only operators get in.
        deployment: The manager's deployment; a token of another is refused.
        clock: Unix time in seconds, injectable for tests.
    """

    def __init__(
        self, internal_token: str, deployment: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._tokens = SandboxTokens(internal_token) if internal_token else None
        self.deployment = deployment
        self._clock = clock

    def require_operator(self, context: CallMetadata, method: str) -> Caller:
        """Refuses a caller that is neither an ``admin`` key nor a Longshore service.

        Raises:
            PermissionDenied: The caller is not an operator.
        """
        who = caller_from_metadata(context.invocation_metadata())
        if not who.is_operator:
            raise PermissionDenied(f"{method}: operators only; {who.describe()} lacks 'admin'")
        return who

    def grant(self, context: CallMetadata) -> SandboxGrant | None:
        """The caller's verified grant; None for an operator, who needs none.

        Raises:
            PermissionDenied: No, a malformed, a forged or an expired token; a
                token of another deployment or held by another key.
        """
        who = caller_from_metadata(context.invocation_metadata())
        if who.is_operator:
            return None
        return self._grant(context, who)

    def check_acquire(
        self, grant: SandboxGrant | None, task_id: str, profile: str, spec: sandbox_pb2.SandboxSpec
    ) -> None:
        """Refuses an acquire outside the grant: another task, profile or spec.

        Raises:
            PermissionDenied: The token is for another task or profile, or the
                spec is not exactly the run's.
        """
        if grant is None:
            return
        if grant.task_id != task_id or grant.profile != profile:
            raise PermissionDenied(
                f"sandbox token of run {quote(grant.run_id)} is for task "
                f"{quote(grant.task_id)} under profile {quote(grant.profile)}, not task "
                f"{quote(task_id)} under profile {quote(profile)}"
            )
        if grant.spec_digest != spec_digest(spec):
            raise PermissionDenied(
                f"spec: differs from the sandbox_spec of run {quote(grant.run_id)}; send "
                "exactly the sandbox_spec ClaimTask returned"
            )

    def check_sandbox(
        self, grant: SandboxGrant | None, info: SandboxInfo, *, exec_user: str = ""
    ) -> None:
        """Refuses a use of a sandbox outside the grant.

        Args:
            grant: The caller's grant (None: an operator).
            info: The sandbox as an inspect reports it (labels, user).
            exec_user: For an Exec, the user it asks for ("" = the sandbox's own).

        Raises:
            PermissionDenied: The sandbox belongs to another task or profile, or
                the exec asks for a user other than the sandbox's.
        """
        if grant is None:
            return
        # A warm member's task-id label predates its task: the name says it.
        task = info.task
        profile = info.labels.get(labels.PROFILE, "")
        if labels.sanitize(grant.task_id) != task or labels.sanitize(grant.profile) != profile:
            raise PermissionDenied(
                f"sandbox {quote(short_id(info.sandbox_id))} belongs to task {quote(task)} "
                f"under profile {quote(profile)}, not to run {quote(grant.run_id)}'s task "
                f"{quote(grant.task_id)} under profile {quote(grant.profile)}"
            )
        if exec_user and exec_user != info.user:
            raise PermissionDenied(
                f"user: {quote(exec_user)} differs from the sandbox's user "
                f"{quote(info.user or '(image default)')}; only an operator may choose the user"
            )

    def _grant(self, context: CallMetadata, who: Caller) -> SandboxGrant:
        token = metadata_value(context, SANDBOX_TOKEN_KEY)
        if self._tokens is None:
            # Without the internal credential nothing can be verified: refuse
            # rather than trust an unsigned claim.
            raise PermissionDenied(
                f"sandbox token cannot be verified (the manager has no internal token); "
                f"{who.describe()} is not an operator"
            )
        grant = self._tokens.verify(token, now=self._clock())
        if grant.deployment != self.deployment:
            raise PermissionDenied(
                f"sandbox token of run {quote(grant.run_id)} is for deployment "
                f"{quote(grant.deployment)}, not {quote(self.deployment)}"
            )
        if grant.holder != who.principal:
            raise PermissionDenied(
                f"sandbox token of run {quote(grant.run_id)} belongs to key "
                f"{quote(grant.holder)}, not {who.describe()}"
            )
        return grant
