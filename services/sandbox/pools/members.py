"""Warm-pool members as the engine lists them, and the rule of which must go.

A member is a started container of a pool's spec in one *slot*, named
:func:`labels.pool_member_name`; a member a task took has the task's key name
instead (so :func:`labels.task_of` says the task). Pure functions here, so
the drain rule is testable without an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.sandbox import labels
from services.sandbox.model import ResolvedSpec


@dataclass
class Pool:
    """What this manager wants of one profile's pool (changed under the pools' lock)."""

    profile: str
    #: The profile's label value (the key of the manager's pools).
    label: str
    size: int
    config_hash: str
    image: str
    #: None for a pool re-adopted at start: members are handed out, not refilled.
    spec: ResolvedSpec | None
    reason: str = ""
    failures: int = 0
    retry_at: float = 0.0
    #: Slots whose member is being created by this manager.
    starting: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Member:
    """A warm-pool member as the filtered list reports it."""

    sandbox_id: str
    name: str
    state: str
    labels: Mapping[str, str]
    image: str = ""

    @property
    def unclaimed(self) -> bool:
        """No task has renamed it yet."""
        return not labels.task_of(self.labels, self.name)

    @property
    def profile_label(self) -> str:
        """Its pool's key: the profile label value."""
        return self.labels.get(labels.PROFILE, "")


def member_of(row: Mapping[str, Any]) -> Member:
    """A member from one row of the engine's container list."""
    return Member(
        sandbox_id=str(row["Id"]),
        name=str((row.get("Names") or [""])[0]).lstrip("/"),
        state=str(row.get("State", "")),
        labels=dict(row.get("Labels") or {}),
        image=str(row.get("Image", "")),
    )


def slot_names(deployment: str, pool: Pool) -> dict[str, int]:
    """Slot name -> slot, for every slot of ``pool``."""
    return {
        labels.pool_member_name(deployment, pool.label, pool.config_hash, i): i
        for i in range(pool.size)
    }


def verdict(member: Member, pool: Pool | None, slots: Mapping[str, int], owner_dead: bool) -> str:
    """Why an unclaimed member must go ("" to keep it).

    Args:
        member: The member (unclaimed).
        pool: This manager's pool of the member's profile, if it has one.
        slots: :func:`slot_names` of ``pool`` (empty without one).
        owner_dead: Whether the manager that created it is known dead.
    """
    if pool is None:
        # Another live manager's pool is its business; a dead one's is nobody's.
        return "its manager is dead and no pool here wants it" if owner_dead else ""
    if pool.size == 0:
        return "the pool was drained (size 0)"
    if member.labels.get(labels.CONFIG_HASH) != pool.config_hash:
        return f"the pool's spec changed (config hash {pool.config_hash})"
    if member.name not in slots:
        return f"slot beyond the pool's size {pool.size}"
    if member.state not in ("running", "created"):
        return f"member is {member.state}, not running"
    return ""


def env_fits(data: Mapping[str, Any], env: Mapping[str, str]) -> bool:
    """Whether an inspected container runs with every env pair an acquire asks for."""
    have = set((data.get("Config") or {}).get("Env") or [])
    return all(f"{k}={v}" in have for k, v in env.items())
