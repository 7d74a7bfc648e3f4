"""Agent profiles: their spec (operator policy), caps, retry policy and image allowlist."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.kanban import secrets
from services.kanban.models import Profile, TaskRun, utcnow
from services.kanban.store import keys
from services.kanban.vocabulary import ExecutorKind, RunStatus
from services.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
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
        "retry_max_attempts",
        "retry_initial_backoff_seconds",
        "retry_max_backoff_seconds",
        "allowed_images",
        "warm_pool_size",
    }
)
MAX_ATTEMPTS = 100
MAX_BACKOFF_SECONDS = 86400.0
MAX_ALLOWED_IMAGES = 32
#: Most warm sandboxes a profile may ask for (the manager's own cap may be lower).
MAX_WARM_POOL_SIZE = 64
MAX_IMAGE_CHARS = 255
_QUOTE = 100


def validate(values: Mapping[str, Any]) -> None:
    """Check profile column values that need no other row.

    Raises:
        InvalidArgument: A value is out of range; the message names the field.
    """
    if "executor" in values and values["executor"] not in tuple(ExecutorKind):
        raise InvalidArgument("profile.executor: must be specified (sandbox, external or none)")
    if values.get("max_in_progress", 0) < 0:
        raise InvalidArgument("profile.max_in_progress: must not be negative")
    runtime = values.get("default_max_runtime_seconds")
    if runtime is not None and runtime <= 0:
        raise InvalidArgument("profile.default_max_runtime: must be positive")
    attempts = values.get("retry_max_attempts", 0)
    if not 0 <= attempts <= MAX_ATTEMPTS:
        raise InvalidArgument(
            f"profile.retry_policy.max_attempts: must be between 0 and {MAX_ATTEMPTS}"
        )
    initial = values.get("retry_initial_backoff_seconds")
    longest = values.get("retry_max_backoff_seconds")
    for name, seconds in (("initial_backoff", initial), ("max_backoff", longest)):
        if seconds is not None and not 0 <= seconds <= MAX_BACKOFF_SECONDS:
            raise InvalidArgument(
                f"profile.retry_policy.{name}: must be between 0 and {MAX_BACKOFF_SECONDS:.0f}s"
            )
    if initial and longest and initial > longest:
        raise InvalidArgument(
            "profile.retry_policy.initial_backoff: must not exceed retry_policy.max_backoff"
        )
    _check_images(values.get("allowed_images", ()))
    warm = values.get("warm_pool_size", 0)
    if not 0 <= warm <= MAX_WARM_POOL_SIZE:
        raise OutOfRange(f"profile.warm_pool_size: must be between 0 and {MAX_WARM_POOL_SIZE}")


def _check_images(images: Any) -> None:
    if len(images) > MAX_ALLOWED_IMAGES:
        raise InvalidArgument(f"profile.allowed_images: at most {MAX_ALLOWED_IMAGES} entries")
    for i, image in enumerate(images):
        where = f"profile.allowed_images[{i}]"
        if not image:
            raise InvalidArgument(f"{where}: must not be empty")
        if len(image) > MAX_IMAGE_CHARS:
            raise InvalidArgument(f"{where}: at most {MAX_IMAGE_CHARS} characters")
        if any(c.isspace() for c in image):
            raise InvalidArgument(f"{where}: {image[:_QUOTE]!r} must not contain whitespace")


def merged_spec(stored: Mapping[str, Any] | None, written: Mapping[str, Any]) -> dict[str, Any]:
    """Return the spec JSON to store when ``written`` replaces ``stored``.

    Env values written as ``<redacted>`` keep their stored values (see
    :mod:`services.kanban.secrets`).

    Raises:
        InvalidArgument: A bad env name, or ``<redacted>`` for a new one.
    """
    stored_env = dict((stored or {}).get("env") or {})
    spec = dict(written)
    env = secrets.merge(stored_env, dict(spec.get("env") or {}), "sandbox_spec.env")
    if env:
        spec["env"] = env
    else:
        spec.pop("env", None)
    return spec


def check_image(profile: Profile, image: str) -> None:
    """Refuse a task image the profile does not allow.

    A task may leave the image empty (the profile's applies), or name the
    profile's own image or one of its ``allowed_images``. Checked locally, no
    RPC: creating tasks must not depend on the sandbox manager being up.

    Raises:
        PermissionDenied: The image is neither.
    """
    if not image:
        return
    own = str((profile.sandbox_spec or {}).get("image") or "")
    if image == own or image in (profile.allowed_images or []):
        return
    raise PermissionDenied(f"image: {image[:_QUOTE]!r} is not allowed for profile {profile.name!r}")


def check_task_image(session: Session, assignee: str | None, image: str) -> None:
    """:func:`check_image` for a task's assignee; an unassigned task is checked on assign.

    Raises:
        PermissionDenied: The assignee's profile does not allow ``image``.
    """
    if not assignee or not image:
        return
    profile = keys.by_key(session, Profile, assignee)
    if profile is not None:
        check_image(profile, image)


def create(session: Session, *, name: str, **values: Any) -> Profile:
    """Create a profile.

    Args:
        session: The caller's write session.
        name: Profile name.
        **values: Column values (executor required; see :data:`MUTABLE_FIELDS`).

    Raises:
        InvalidArgument: Bad name, executor, cap, runtime, retry policy,
            allowed images or env (``<redacted>`` for a new name).
        AlreadyExists: A profile with that name exists.
    """
    if not PROFILE_NAME.fullmatch(name):
        raise InvalidArgument(
            f"profile.name: {name!r} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}"
        )
    if "executor" not in values:
        raise InvalidArgument("profile.executor: required")
    validate(values)
    if keys.by_key(session, Profile, name) is not None:
        raise AlreadyExists(f"profile {name!r} already exists")
    if "sandbox_spec" in values:
        values["sandbox_spec"] = merged_spec(None, values["sandbox_spec"])
    now = utcnow()
    profile = Profile(name=name, create_time=now, update_time=now, **values)
    session.add(profile)
    session.flush()
    return profile


def require_absent(session: Session, name: str) -> None:
    """Refuses a name a profile has (before a create's side effects).

    Raises:
        AlreadyExists: A profile with that name exists.
    """
    if keys.by_key(session, Profile, name) is not None:
        raise AlreadyExists(f"profile {name!r} already exists")


def get(session: Session, name: str) -> Profile:
    """Return a profile.

    Raises:
        InvalidArgument: Empty name.
        NotFound: No such profile.
    """
    if not name:
        raise InvalidArgument("name: required")
    profile = keys.by_key(session, Profile, name)
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
    validate(values)
    profile = get(session, name)
    if "sandbox_spec" in values:
        # Merged against the row read in this transaction, so a value kept
        # through `<redacted>` is the newest stored one even if another
        # update landed since the caller's spec was checked.
        values = {
            **values,
            "sandbox_spec": merged_spec(profile.sandbox_spec, values["sandbox_spec"]),
        }
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
        .where(TaskRun.status == RunStatus.RUNNING)
        .group_by(TaskRun.profile)
    )
    return {profile: int(n) for profile, n in session.execute(stmt)}
