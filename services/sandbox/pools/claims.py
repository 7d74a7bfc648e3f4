"""Who may rename or remove a warm member: the rule that keeps a member to one task.

The engine's rename is no compare-and-swap: it looks the container up before
it takes the container's lock, so two renames that found one member by its
slot name both succeed, one after the other, and the second takes the member
from the first one's task (seen on engine 20.10). So a member is renamed or
removed only by a process that holds it exclusively:

* its creator (``io.longshore.owner`` is this manager), under this process's
  lock of the pool: the list and the rename both happen under it, so no
  thread ever acts on a name another thread changed;
* for a member of a dead manager (this one's previous run), whoever wins the
  engine's pause of it: a pause runs under the container's lock and refuses
  a paused container (409), so exactly one contender holds the frozen member;
  it checks the name is still the slot's, renames or removes it, then thaws it.

A member of another live manager is never touched: that manager hands it out
and drains it.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.sandbox import labels
from services.sandbox.docker_client import engine_call
from services.sandbox.pools.members import Member

if TYPE_CHECKING:
    from services.sandbox.manager import SandboxManager

#: Locks the pools are spread over (bounded, whatever the number of profiles).
_STRIPES = 16


class Claims:
    """Exclusive holds on warm members for one manager process.

    Args:
        manager: The manager (its owner id, liveness rule and engine client).
    """

    def __init__(self, manager: SandboxManager) -> None:
        self._manager = manager
        self._own = labels.sanitize(manager.owner)
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]

    def lock(self, profile_label: str) -> threading.Lock:
        """This process's lock of a pool: list and act on its members under it."""
        return self._stripes[zlib.crc32(profile_label.encode()) % _STRIPES]

    @contextmanager
    def hold(self, member: Member) -> Iterator[bool]:
        """Holds ``member`` for the block (under :meth:`lock`); yields whether it could.

        Yields False for another live manager's member, a dead manager's one
        another contender froze first, or one renamed since it was listed.
        """
        if member.labels.get(labels.OWNER) == self._own:
            yield True
            return
        if not self._manager.is_owner_dead(member.labels) or not self._freeze(member):
            yield False
            return
        try:
            yield True
        finally:
            self._thaw(member.sandbox_id)

    def _freeze(self, member: Member) -> bool:
        cid = member.sandbox_id
        try:
            with engine_call("containers.pause", resource=f"sandbox {cid!r}", sandbox_id=cid):
                self._manager.api.pause(cid)
        except (NotFound, FailedPrecondition, InvalidArgument):
            return False  # gone, or frozen by another contender first
        data = self._manager.inspect_or_none(cid)
        if data is None or str(data.get("Name", "")).lstrip("/") != member.name:
            self._thaw(cid)  # a task took it before we froze it
            return False
        return True

    def _thaw(self, cid: str) -> None:
        try:
            with engine_call("containers.unpause", resource=f"sandbox {cid!r}", sandbox_id=cid):
                self._manager.api.unpause(cid)
        except (NotFound, FailedPrecondition):
            pass  # removed while held, or never frozen
