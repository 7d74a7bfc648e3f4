"""What an access check reads of a sandbox, kept once a task has it.

A check (:meth:`~services.sandbox.access.SandboxAccess.check_sandbox`) reads a
sandbox's full id, task, profile and user. None of them changes once a task
has the sandbox: labels and the user are fixed when the container is made,
and its name (which says the task of a taken warm member) changes only at
the handout, from the pool's slot name to the task's. So only the first
check of a sandbox inspects it; every later call of its run costs no engine
call for the check (an inspect is 2-3 ms here, as much as the rest of a
process start a spare serves).

A sandbox no task has (an untaken warm member) is never kept. Entries are
kept by full id, which the engine never reuses: one that outlives its
container is harmless (the next engine call on it fails as NOT_FOUND, as it
would after the inspect), and the table is bounded, oldest use out first.
The state of a kept record is the first inspect's: callers that decide on
the state inspect themselves.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from services.sandbox.model import SandboxInfo

#: Sandboxes kept at most (a few hundred bytes each).
MAX_KEPT = 4096


class Identities:
    """The sandboxes access checks have seen with a task, by full id.

    Args:
        get: The manager's inspect of a sandbox of its deployment (raises
            NotFound for any other).
        known: The full id a reference was last resolved to, if any (no
            engine call).
        limit: Most sandboxes kept.
    """

    def __init__(
        self,
        get: Callable[[str], SandboxInfo],
        known: Callable[[str], str | None],
        *,
        limit: int = MAX_KEPT,
    ) -> None:
        self._get = get
        self._known = known
        self._limit = limit
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, SandboxInfo] = OrderedDict()

    def of(self, sandbox_id: str) -> SandboxInfo:
        """The sandbox ``sandbox_id`` (an id, unique prefix or name) names, for a check.

        Raises:
            InvalidArgument: Empty sandbox_id.
            NotFound: No such sandbox in this deployment.
        """
        cid = self._known(sandbox_id)
        if cid is not None:
            with self._lock:
                kept = self._kept.get(cid)
                if kept is not None:
                    self._kept.move_to_end(cid)
                    return kept
        info = self._get(sandbox_id)
        self.keep(info)
        return info

    def keep(self, info: SandboxInfo) -> None:
        """Keeps an inspected sandbox if a task has it (a handout knows it first)."""
        if not info.task:
            return
        with self._lock:
            self._kept[info.sandbox_id] = info
            self._kept.move_to_end(info.sandbox_id)
            while len(self._kept) > self._limit:
                self._kept.popitem(last=False)

    def forget(self, cid: str) -> None:
        """Drops a sandbox that is going away."""
        with self._lock:
            self._kept.pop(cid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)
