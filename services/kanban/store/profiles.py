"""Agent profiles."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.kanban.models import EXECUTORS, RUN_RUNNING, Profile, TaskRun, utcnow
from services.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MUTABLE_FIELDS = frozenset(
    {
        "executor",
        "sandbox_spec",
        "max_in_progress",
        "keep_sandbox",
        "default_max_runtime_seconds",
        "description",
    }
)


def _validate(values: dict[str, Any]) -> None:
    if "executor" in values and values["executor"] not in EXECUTORS:
        raise InvalidArgument("profile.executor: must be specified (sandbox, external or none)")
    if values.get("max_in_progress", 0) < 0:
        raise InvalidArgument("profile.max_in_progress: must not be negative")
    runtime = values.get("default_max_runtime_seconds")
    if runtime is not None and runtime <= 0:
        raise InvalidArgument("profile.default_max_runtime: must be positive")


def create(session: Session, *, name: str, **values: Any) -> Profile:
    """Create a profile.

    Args:
        session: The caller's write session.
        name: Profile name.
        **values: Column values (executor required; see :data:`MUTABLE_FIELDS`).

    Raises:
        InvalidArgument: Bad name, executor, cap or runtime.
        AlreadyExists: A profile with that name exists.
    """
    if not PROFILE_NAME.fullmatch(name):
        raise InvalidArgument(
            f"profile.name: {name!r} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}"
        )
    if "executor" not in values:
        raise InvalidArgument("profile.executor: required")
    _validate(values)
    if session.get(Profile, name) is not None:
        raise AlreadyExists(f"profile {name!r} already exists")
    now = utcnow()
    profile = Profile(name=name, create_time=now, update_time=now, **values)
    session.add(profile)
    session.flush()
    return profile


def get(session: Session, name: str) -> Profile:
    """Return a profile.

    Raises:
        InvalidArgument: Empty name.
        NotFound: No such profile.
    """
    if not name:
        raise InvalidArgument("name: required")
    profile = session.get(Profile, name)
    if profile is None:
        raise NotFound(f"profile {name!r} not found")
    return profile


def list_profiles(session: Session, *, after: str | None, limit: int) -> list[Profile]:
    """Return profiles by name, after ``after``."""
    stmt = select(Profile).order_by(Profile.name).limit(limit)
    if after is not None:
        stmt = stmt.where(Profile.name > after)
    return list(session.scalars(stmt))


def all_profiles(session: Session) -> list[Profile]:
    """Return every profile."""
    return list(session.scalars(select(Profile)))


def update(session: Session, name: str, values: dict[str, Any]) -> Profile:
    """Change the given fields of a profile.

    Raises:
        InvalidArgument: A field is unknown or immutable, or a value is bad.
        NotFound: No such profile.
    """
    unknown = sorted(set(values) - MUTABLE_FIELDS)
    if unknown:
        raise InvalidArgument(f"update_mask: {unknown[0]!r} is unknown or immutable")
    _validate(values)
    profile = get(session, name)
    for key, value in values.items():
        setattr(profile, key, value)
    profile.update_time = utcnow()
    session.flush()
    return profile


def delete(session: Session, name: str) -> None:
    """Delete a profile; its tasks keep the name as assignee.

    Raises:
        NotFound: No such profile.
        FailedPrecondition: Tasks of the profile are running.
    """
    profile = get(session, name)
    running = running_counts(session).get(name, 0)
    if running:
        raise FailedPrecondition(f"profile {name!r} has {running} running tasks")
    session.delete(profile)
    session.flush()


def running_counts(session: Session) -> dict[str, int]:
    """Return the number of running runs per profile."""
    stmt = (
        select(TaskRun.profile, func.count())
        .where(TaskRun.status == RUN_RUNNING)
        .group_by(TaskRun.profile)
    )
    return {profile: int(n) for profile, n in session.execute(stmt)}
