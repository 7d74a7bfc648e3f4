"""Dispatcher caps and defaults as the anchor reads them: invalid means "no cap".

``parse_cap`` is the one place that interprets a cap setting (``0``, a
negative number or a non-integer mean no cap, with one warning per value);
``planner_settings`` builds the planner's :class:`PlannerSettings` from the
raw setting values. ``planner.py`` re-exports both.
"""

from __future__ import annotations

import logging
import threading

from services.kanban.planner_types import PlannerSettings

log = logging.getLogger(__name__)

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def parse_cap(raw: object, *, setting: str = "cap") -> int | None:
    """Parse a cap setting the anchor's way.

    Args:
        raw: The configured value: an int, a string, or ``None``/``""`` (unset).
        setting: The setting's name, for the warning.

    Returns:
        The cap, or ``None`` for "no cap". ``0``, negative and non-integer
        values mean no cap and log one warning per (setting, value).
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str):
        try:
            value = int(raw.strip())
        except ValueError:
            value = None
    if value is not None and value > 0:
        return value
    key = (setting, repr(raw))
    with _warned_lock:
        first = key not in _warned
        _warned.add(key)
    if first:
        log.warning(
            "%s=%r is not a positive integer: no cap applies",
            setting,
            raw,
            extra={"setting": setting},
        )
    return None


def normalize_assignee(raw: str | None) -> str | None:
    """An assignee setting with surrounding whitespace dropped; empty means none."""
    if raw is None:
        return None
    value = raw.strip()
    return value or None


def planner_settings(
    *,
    default_assignee: str | None = None,
    max_in_progress: object = None,
    max_in_progress_per_profile: object = None,
    failure_limit: int = 2,
    retry_initial_backoff_seconds: float = 5.0,
    retry_max_backoff_seconds: float = 300.0,
) -> PlannerSettings:
    """Build :class:`PlannerSettings` from raw setting values (see :func:`parse_cap`).

    Args:
        default_assignee: ``kanban.default_assignee``; empty or whitespace = none.
        max_in_progress: ``kanban.max_in_progress`` as configured.
        max_in_progress_per_profile: ``kanban.max_in_progress_per_profile``.
        failure_limit: ``kanban.failure_limit``; below 1 is treated as 1.
        retry_initial_backoff_seconds: ``kanban.retry_initial_backoff_seconds``;
            negative is treated as 0 (retry at once).
        retry_max_backoff_seconds: ``kanban.retry_max_backoff_seconds``; below
            the initial delay is treated as the initial delay.

    Returns:
        The parsed settings.
    """
    initial = max(0.0, retry_initial_backoff_seconds)
    return PlannerSettings(
        default_assignee=normalize_assignee(default_assignee),
        max_in_progress=parse_cap(max_in_progress, setting="kanban.max_in_progress"),
        max_in_progress_per_profile=parse_cap(
            max_in_progress_per_profile, setting="kanban.max_in_progress_per_profile"
        ),
        failure_limit=max(1, failure_limit),
        retry_initial_backoff_seconds=initial,
        retry_max_backoff_seconds=max(initial, retry_max_backoff_seconds),
    )
