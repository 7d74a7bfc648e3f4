"""RPC metrics: the instruments the serving interceptor records into, and a one-minute window.

Every call a server finishes is recorded, by method and status code, in the
``rpc.server.duration`` histogram (milliseconds; its count is the number of
calls), and the calls in flight are an observed up-down counter
``rpc.server.active_calls`` by method (a held stream or long poll counts
until it ends). Attributes follow the OpenTelemetry RPC conventions:
``rpc.system``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``.

The serving interceptor (:mod:`services.runtime.aio_interceptors`) records
each call as it sends the status, so the code recorded is the one the client
sees (a refused credential, a mapped typed error, malformed bytes). A
:class:`CallWindow`, when given, keeps
the last minute of calls in memory for the gateway's headline figures
(``GetStatus``): calls per second, p50/p99, errors by code, held streams.
Health checks and reflection are left out of the window (probes are not
traffic) but not out of the metrics.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from services.runtime.interceptors import is_open_method

#: ``rpc.grpc.status_code`` values, by code (the conventions want the number).
_CODE_NUMBER = {code: code.value[0] for code in grpc.StatusCode}
#: Codes that are not a failure of the call: a client that went away.
_NOT_ERRORS = frozenset({grpc.StatusCode.OK, grpc.StatusCode.CANCELLED})


@dataclass(frozen=True)
class TrafficFigures:
    """The last minute of calls, as :meth:`CallWindow.figures` sums them.

    Attributes:
        window_seconds: Seconds summed (less than the window just after start).
        calls: Calls finished in the window.
        calls_per_second: ``calls / window_seconds``.
        p50_ms: Median duration; the upper bound of its bucket (<= 25% high).
        p99_ms: 99th percentile, same resolution.
        errors: Calls that ended with neither OK nor CANCELLED.
        errors_by_code: ``errors`` by status code name.
        in_flight: Calls in progress now (held streams and long polls too).
        held_streams: Response-streaming calls in progress now.
    """

    window_seconds: float
    calls: int
    calls_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    errors_by_code: Mapping[str, int]
    in_flight: int
    held_streams: int


def _bounds() -> tuple[float, ...]:
    """Bucket upper bounds in ms: x1.25 steps from 0.05 ms to 10 minutes."""
    bounds = [0.05]
    while bounds[-1] < 600_000:
        bounds.append(bounds[-1] * 1.25)
    return tuple(bounds)


_WINDOW_BOUNDS = _bounds()


@dataclass
class _Second:
    """One second of the window."""

    second: int = -1
    calls: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(_WINDOW_BOUNDS) + 1))
    errors: dict[str, int] = field(default_factory=dict)


class CallWindow:
    """The last ``seconds`` of finished calls in one-second slots, plus calls in flight.

    Recording is a bisect and a few increments under a lock: calls are
    recorded on the server's loop, but :meth:`figures` may be read from any
    other thread (on the loop the lock is never contended). Figures sum the
    slots on demand.

    Args:
        seconds: Length of the window.
        clock: Monotonic seconds; injectable for tests.
    """

    def __init__(self, seconds: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._started = clock()
        self._slots = [_Second() for _ in range(seconds)]
        # One lock for slots and gauges: a figure must not see a call that is
        # both finished and still in flight.
        self._lock = threading.Lock()
        self._in_flight = 0
        self._streams = 0

    def begin(self, streaming: bool) -> None:
        """Counts a call that started."""
        with self._lock:
            self._in_flight += 1
            if streaming:
                self._streams += 1

    def end(self, streaming: bool, duration_ms: float, code: grpc.StatusCode) -> None:
        """Counts a call that finished after ``duration_ms`` with ``code``."""
        second = int(self._clock())
        index = bisect.bisect_left(_WINDOW_BOUNDS, duration_ms)
        with self._lock:
            self._in_flight -= 1
            if streaming:
                self._streams -= 1
            slot = self._slots[second % self._seconds]
            if slot.second != second:
                slot.second, slot.calls, slot.errors = second, 0, {}
                slot.buckets = [0] * (len(_WINDOW_BOUNDS) + 1)
            slot.calls += 1
            slot.buckets[index] += 1
            if code not in _NOT_ERRORS:
                slot.errors[code.name] = slot.errors.get(code.name, 0) + 1

    def figures(self) -> TrafficFigures:
        """Sums the window (the current, partial second included)."""
        now = self._clock()
        second = int(now)
        buckets = [0] * (len(_WINDOW_BOUNDS) + 1)
        errors: dict[str, int] = {}
        calls = 0
        with self._lock:
            for slot in self._slots:
                if second - slot.second >= self._seconds or slot.second > second:
                    continue
                calls += slot.calls
                for i, n in enumerate(slot.buckets):
                    buckets[i] += n
                for name, n in slot.errors.items():
                    errors[name] = errors.get(name, 0) + n
            in_flight, streams = self._in_flight, self._streams
        covered = min(float(self._seconds), max(now - self._started, 1.0))
        return TrafficFigures(
            window_seconds=round(covered, 3),
            calls=calls,
            calls_per_second=calls / covered,
            p50_ms=_quantile(buckets, calls, 0.50),
            p99_ms=_quantile(buckets, calls, 0.99),
            errors=sum(errors.values()),
            errors_by_code=dict(sorted(errors.items())),
            in_flight=in_flight,
            held_streams=streams,
        )


def _quantile(buckets: list[int], total: int, q: float) -> float:
    """Upper bound of the bucket holding the ``q`` quantile; 0 without calls."""
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank:
            return _WINDOW_BOUNDS[min(i, len(_WINDOW_BOUNDS) - 1)]
    return _WINDOW_BOUNDS[-1]


class RpcMetrics:
    """The RPC instruments of one server, and the window fed with them.

    Args:
        meter: Where ``rpc.server.duration`` and ``rpc.server.active_calls``
            are created; None records the window only.
        window: Fed with every call but health checks and reflection.
    """

    def __init__(self, meter: Meter | None, window: CallWindow | None = None) -> None:
        self.window = window
        self._duration = (
            meter.create_histogram(
                "rpc.server.duration",
                unit="ms",
                description="Duration of finished calls, by method and status code.",
            )
            if meter is not None
            else None
        )
        # Calls in flight are counted here and observed at collection: an
        # up-down counter would cost two SDK measurements per call (each
        # cleans and hashes its attributes), tripling the cost of recording.
        self._active: dict[str, int] | None = None
        # The loop counts and the collector reads from its own thread: an
        # increment is a read and a write, and a collection must not see half.
        self._active_lock = threading.Lock()
        if meter is not None:
            self._active = {}
            meter.create_observable_up_down_counter(
                "rpc.server.active_calls",
                callbacks=[self._observe_active],
                unit="{call}",
                description="Calls in progress (held streams and long polls included).",
            )
        # Attribute dicts built once per method (and code): the OTel SDK keys
        # its series by them, and building them per call is measurable at
        # thousands of calls per second.
        self._method_attrs: dict[str, dict[str, str]] = {}
        self._code_attrs: dict[tuple[str, grpc.StatusCode], dict[str, Any]] = {}

    def _attrs(self, method: str) -> dict[str, str]:
        attrs = self._method_attrs.get(method)
        if attrs is None:
            service, _, name = method.lstrip("/").partition("/")
            attrs = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            self._method_attrs[method] = attrs
        return attrs

    def call(self, method: str, streaming: bool) -> TimedCall:
        """Starts timing one call of ``method``; finish it with :meth:`TimedCall.end`."""
        attrs = self._attrs(method)
        window = None if is_open_method(method) else self.window
        if self._active is not None:
            with self._active_lock:
                self._active[method] = self._active.get(method, 0) + 1
        if window is not None:
            window.begin(streaming)
        return TimedCall(self, method, attrs, streaming, window, time.perf_counter())

    def _finish(self, call: TimedCall, code: grpc.StatusCode) -> None:
        duration_ms = (time.perf_counter() - call.started) * 1000
        if self._active is not None:
            with self._active_lock:
                self._active[call.method] -= 1
        if self._duration is not None:
            key = (call.method, code)
            attrs = self._code_attrs.get(key)
            if attrs is None:
                attrs = {**call.attrs, "rpc.grpc.status_code": _CODE_NUMBER[code]}
                self._code_attrs[key] = attrs
            self._duration.record(duration_ms, attrs)
        if call.window is not None:
            call.window.end(call.streaming, duration_ms, code)

    def _observe_active(self, _options: CallbackOptions) -> Iterable[Observation]:
        assert self._active is not None
        with self._active_lock:
            counts = list(self._active.items())
        return [Observation(n, self._attrs(method)) for method, n in counts]


@dataclass(slots=True)
class TimedCall:
    """One call being timed."""

    metrics: RpcMetrics
    method: str
    attrs: dict[str, str]
    streaming: bool
    window: CallWindow | None
    started: float
    ended: bool = False

    def end(self, code: grpc.StatusCode) -> None:
        """Records the call once, with the code the client sees."""
        if not self.ended:
            self.ended = True
            self.metrics._finish(self, code)


def finished_code(context: Any, exc: BaseException | None) -> grpc.StatusCode:
    """The status a finished behaviour leaves: what it set or aborted with, else OK.

    The serving interceptor maps every exception to an abort, so an exception
    without a code is one that escaped it (gRPC answers UNKNOWN) or a
    cancellation (the client went away, or the server is stopping).
    """
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # the aio context may keep the raw number
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
