"""Retry backoff arithmetic: how long a failed task waits before its next attempt.

Pure functions over a :class:`RetryPolicy` (a profile's, with the dispatcher's
settings filling its zeros): the planner, the store (which records
``next_attempt_time``) and the tests share them, so a dry run and the real
tick compute the same times. ``planner.py`` re-exports them.
"""

from __future__ import annotations

import datetime as dt
import math

from services.kanban.planner_types import PlannerSettings, ProfileView, RetryPolicy

# Longest delay any policy can ask for; keeps ``now + delay`` representable.
MAX_BACKOFF_SECONDS = 366 * 86400.0


def retry_policy(profile: ProfileView | None, settings: PlannerSettings) -> RetryPolicy:
    """A profile's retry policy with its zeros replaced by the settings' values.

    Args:
        profile: The profile, or ``None`` (unknown: the settings apply).
        settings: The dispatcher's settings.

    Returns:
        A policy whose three fields are all set (``max_attempts`` >= 1).
    """
    own = profile.retry if profile is not None else RetryPolicy()
    attempts = own.max_attempts if own.max_attempts > 0 else settings.failure_limit
    initial = (
        own.initial_backoff_seconds
        if own.initial_backoff_seconds > 0
        else settings.retry_initial_backoff_seconds
    )
    longest = (
        own.max_backoff_seconds
        if own.max_backoff_seconds > 0
        else settings.retry_max_backoff_seconds
    )
    return RetryPolicy(max(1, attempts), initial, max(initial, longest))


def backoff_seconds(failures: int, policy: RetryPolicy) -> float:
    """The delay before the retry after ``failures`` failures in a row.

    ``min(max_backoff, initial * 2**(failures - 1))``: the first retry waits
    the initial delay, each further failure doubles it, up to the maximum.
    Overflow-safe for any ``failures`` (a huge count is simply the maximum)
    and never longer than :data:`MAX_BACKOFF_SECONDS`.

    Args:
        failures: Failures in a row, this one included (below 1 counts as 1).
        policy: A resolved policy (see :func:`retry_policy`).

    Returns:
        Seconds, ``>= 0``.
    """
    initial = max(0.0, policy.initial_backoff_seconds)
    longest = min(max(initial, policy.max_backoff_seconds), MAX_BACKOFF_SECONDS)
    if initial == 0.0:
        return 0.0
    # 2**1000 times any positive initial delay exceeds every cap we allow, and
    # ldexp stays finite there; larger exponents are clamped before the call.
    exponent = min(max(0, failures - 1), 1000)
    try:
        delay = math.ldexp(initial, exponent)
    except OverflowError:
        delay = math.inf
    return min(longest, initial if delay < initial else delay)


def next_attempt_time(now: dt.datetime, failures: int, policy: RetryPolicy) -> dt.datetime:
    """``now`` plus :func:`backoff_seconds` (the task's ``next_attempt_time``)."""
    return now + dt.timedelta(seconds=backoff_seconds(failures, policy))
