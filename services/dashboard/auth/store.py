"""Server-side sessions: the truth behind every session cookie.

The signed cookie only names a session (its random id, the subject and an
expiry); the credential the session acts with lives here, in memory. So
logging out, or the gateway no longer knowing the key, ends the session for
good: the old cookie names nothing any more and is refused.

Sessions live in this process only: a dashboard restart signs everyone out,
and several replicas behind one address need sticky routing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

#: Sessions kept at most; the one idle longest is dropped first beyond this.
DEFAULT_MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class SessionRecord:
    """What the server remembers about one login.

    Attributes:
        session_id: The random id the cookie carries.
        subject: Who logged in (``apikey:<fingerprint>``, an OIDC email/sub).
        method: ``api_key`` or ``oidc``.
        api_key: The gateway key every call of this session uses (never
            shown, never logged).
        scopes: The scopes the gateway reported for ``api_key`` at login.
        auth_time: When the user logged in (epoch seconds).
        last_seen: When the session was last used (epoch seconds).
    """

    session_id: str
    subject: str
    method: str
    api_key: str = field(repr=False)
    scopes: frozenset[str]
    auth_time: float
    last_seen: float


class SessionStore:
    """A bounded, expiring map of session id to :class:`SessionRecord`.

    Args:
        idle_seconds: A session unused this long is gone.
        max_lifetime_seconds: A session older than this is gone, used or not.
        clock: Epoch-seconds clock (tests inject one).
        max_sessions: Bound on memory; beyond it the least recently used
            session is dropped (its user logs in again).
    """

    def __init__(
        self,
        *,
        idle_seconds: float,
        max_lifetime_seconds: float,
        clock: Callable[[], float],
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self._idle = idle_seconds
        self._max_lifetime = max_lifetime_seconds
        self._clock = clock
        self._max = max_sessions
        # One lock for the map: request threads read and write it concurrently,
        # and "get then touch" must not interleave with a logout's delete.
        self._lock = threading.Lock()
        self._records: OrderedDict[str, SessionRecord] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def _alive(self, record: SessionRecord, now: float) -> bool:
        return now - record.last_seen < self._idle and now - record.auth_time < self._max_lifetime

    def put(self, record: SessionRecord) -> None:
        """Remember a new session, dropping expired and, beyond the bound, idle ones."""
        now = self._clock()
        with self._lock:
            if len(self._records) >= self._max:
                for session_id, old in list(self._records.items()):
                    if not self._alive(old, now):
                        del self._records[session_id]
            while len(self._records) >= self._max:
                self._records.popitem(last=False)
            self._records[record.session_id] = record

    def get(self, session_id: str) -> SessionRecord | None:
        """The live session with this id (and mark it used), or None."""
        now = self._clock()
        with self._lock:
            record = self._records.get(session_id)
            if record is None:
                return None
            if not self._alive(record, now):
                del self._records[session_id]
                return None
            record = replace(record, last_seen=now)
            self._records[session_id] = record
            self._records.move_to_end(session_id)
            return record

    def delete(self, session_id: str) -> bool:
        """End a session (logout, or its key was refused); True if it existed."""
        with self._lock:
            return self._records.pop(session_id, None) is not None

    def delete_key(self, api_key: str) -> int:
        """End every session acting with ``api_key`` (the gateway refused it)."""
        with self._lock:
            dead = [sid for sid, rec in self._records.items() if rec.api_key == api_key]
            for session_id in dead:
                del self._records[session_id]
            return len(dead)
