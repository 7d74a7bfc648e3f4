"""Env values are write-only: reads show ``<redacted>``, writes may send it back.

Profiles' ``sandbox_spec.env`` and tasks' ``env`` carry credentials the
sandboxed command needs. Every Profile and Task message kanban produces names
each variable with the value :data:`REDACTED`, whoever asks (an admin key
reads through the same path as a read-only one, and the dashboard shows what
the API returns). The executor reads rows, not messages, so sandboxes still
get the real values; a worker receives them only in the ``sandbox_spec`` of a
run it holds.

A write that sends :data:`REDACTED` for a name that already exists keeps the
stored value, so a read-modify-write round trip (``longshore profile update``
after a Get) changes nothing it did not mean to change; for a new name the
marker is refused, since storing it would silently run the sandbox with the
literal text ``<redacted>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from services.runtime.errors import InvalidArgument

#: The value every env variable reads as.
REDACTED = "<redacted>"

#: Variable names the sandbox manager accepts (``services/sandbox/hardening.py``
#: holds the same rule; services share contracts, not code, so it is repeated
#: here to refuse a bad name when the task is written, not when it spawns).
ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
#: Longest variable name echoed back in an error.
_QUOTE = 100


def redact(env: Mapping[str, str]) -> dict[str, str]:
    """Return ``env`` with every value replaced by :data:`REDACTED`."""
    return dict.fromkeys(env, REDACTED)


def check_names(env: Mapping[str, str], field: str) -> None:
    """Refuse a variable name the sandbox manager would refuse.

    Args:
        env: The variables as written.
        field: How errors name the map, e.g. ``task.env``.

    Raises:
        InvalidArgument: A name is not ``[A-Za-z_][A-Za-z0-9_]*``.
    """
    for name in env:
        if not ENV_NAME.match(name):
            raise InvalidArgument(
                f"{field}: invalid variable name {name[:_QUOTE]!r} "
                "(expected [A-Za-z_][A-Za-z0-9_]*)"
            )


def merge(stored: Mapping[str, str], written: Mapping[str, str], field: str) -> dict[str, str]:
    """Return the env to store when ``written`` replaces ``stored``.

    Names absent from ``written`` are dropped (the map is replaced as a
    whole); a name written as :data:`REDACTED` keeps its stored value.

    Args:
        stored: The values stored now (empty on create).
        written: The values the caller sent.
        field: How errors name the map, e.g. ``sandbox_spec.env``.

    Raises:
        InvalidArgument: A bad name, or :data:`REDACTED` for a name not stored.
    """
    check_names(written, field)
    merged: dict[str, str] = {}
    for name, value in written.items():
        if value != REDACTED:
            merged[name] = value
        elif name in stored:
            merged[name] = stored[name]
        else:
            raise InvalidArgument(f"{field}[{name[:_QUOTE]!r}]: {REDACTED!r} is reserved")
    return merged
