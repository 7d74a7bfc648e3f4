"""Throttling of wrong-key logins, per client address.

After ``limit`` failed logins from one address within ``window`` seconds,
further attempts from that address are refused (429 with ``Retry-After``)
until the oldest failure leaves the window. Other addresses are never
affected. Memory is bounded: at most ``limit`` timestamps per address and at
most ``max_addresses`` addresses (the least recently failing is forgotten
first, which can only ever let an attacker try *more*, never lock anyone out).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable

LIMIT = 10
WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 10_000


class LoginThrottle:
    """Counts failed logins per address in a sliding window.

    Args:
        clock: Epoch-seconds clock (tests inject one).
        limit: Failures allowed within the window.
        window: The window, in seconds.
        max_addresses: Addresses remembered at most.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        limit: int = LIMIT,
        window: float = WINDOW_SECONDS,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._max = max_addresses
        # Login requests run on several threads at once; the check and the
        # record of one address must see each other's updates.
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> int:
        """Seconds until ``address`` may try again; 0 when it may try now."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(address)
            if times is None:
                return 0
            while times and now - times[0] >= self._window:
                times.popleft()
            if not times:
                del self._failures[address]
                return 0
            if len(times) < self._limit:
                return 0
            return max(1, math.ceil(times[0] + self._window - now))

    def failed(self, address: str) -> None:
        """Record one failed login from ``address``."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(address)
            if times is None:
                while len(self._failures) >= self._max:
                    self._failures.popitem(last=False)
                times = self._failures[address] = deque(maxlen=self._limit)
            times.append(now)
            self._failures.move_to_end(address)

    def __len__(self) -> int:
        with self._lock:
            return len(self._failures)
