"""Conversions between database rows and ``longshore.kanban.v1`` messages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from longshore.kanban.v1 import (
    board_pb2,
    comment_pb2,
    event_pb2,
    profile_pb2,
    run_pb2,
    task_pb2,
)
from longshore.sandbox.v1 import sandbox_pb2
from opentelemetry import propagate

from services.kanban import limits, models, secrets
from services.runtime.errors import InvalidArgument, OutOfRange


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """Return a Timestamp for an aware datetime, or None."""
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(dt.UTC))
    return ts


def duration(seconds: float | None) -> duration_pb2.Duration | None:
    """Return a Duration for a number of seconds, or None."""
    if seconds is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(dt.timedelta(seconds=seconds))
    return d


def seconds_of(d: duration_pb2.Duration, field_name: str) -> float:
    """Return a Duration in seconds.

    Raises:
        InvalidArgument: The duration is negative or its nanos are out of range.
        OutOfRange: It is longer than :data:`~services.kanban.limits.MAX_DURATION_SECONDS`
            (``now + 2^62 s`` would overflow a datetime).
    """
    if not -999_999_999 <= d.nanos <= 999_999_999:
        raise InvalidArgument(f"{field_name}: nanos must be within ±999999999")
    value = d.seconds + d.nanos / 1e9
    if value < 0:
        raise InvalidArgument(f"{field_name}: must not be negative")
    if value > limits.MAX_DURATION_SECONDS:
        raise OutOfRange(f"{field_name}: at most {limits.MAX_DURATION_SECONDS} seconds")
    return value


def task_status_name(value: int) -> str:
    """Return the stored status for a ``TaskStatus`` enum value.

    Raises:
        InvalidArgument: The value is unspecified or unknown.
    """
    if value == task_pb2.TASK_STATUS_UNSPECIFIED or value not in task_pb2.TaskStatus.values():
        raise InvalidArgument("status: must be specified")
    return task_pb2.TaskStatus.Name(value).removeprefix("TASK_STATUS_").lower()  # type: ignore[arg-type]


def task_status_value(name: str) -> task_pb2.TaskStatus.ValueType:
    """Return the ``TaskStatus`` enum value of a stored status."""
    return task_pb2.TaskStatus.Value("TASK_STATUS_" + name.upper())


def executor_name(value: int) -> str:
    """Return the stored executor for an ``Executor`` enum value.

    Raises:
        InvalidArgument: The value is unspecified or unknown.
    """
    if value == profile_pb2.EXECUTOR_UNSPECIFIED or value not in profile_pb2.Executor.values():
        raise InvalidArgument("profile.executor: must be specified (sandbox, external or none)")
    return profile_pb2.Executor.Name(value).removeprefix("EXECUTOR_").lower()  # type: ignore[arg-type]


def spec_json(spec: sandbox_pb2.SandboxSpec) -> dict[str, Any]:
    """Return the proto JSON of a SandboxSpec, as stored."""
    return json_format.MessageToDict(spec)


def spec_proto(data: Mapping[str, Any]) -> sandbox_pb2.SandboxSpec:
    """Return the SandboxSpec stored as proto JSON."""
    spec = sandbox_pb2.SandboxSpec()
    json_format.ParseDict(dict(data), spec, ignore_unknown_fields=True)
    return spec


def board(row: models.Board, counts: Mapping[str, int] | None = None) -> board_pb2.Board:
    """Return the Board message of a row."""
    return board_pb2.Board(
        board_id=row.board_id,
        display_name=row.display_name,
        description=row.description,
        create_time=timestamp(row.create_time),
        task_counts=dict(counts or {}),
    )


def redacted_spec(data: Mapping[str, Any]) -> sandbox_pb2.SandboxSpec:
    """Return the stored spec with every env value replaced by ``<redacted>``."""
    spec = spec_proto(data)
    redacted = secrets.redact(spec.env)
    spec.env.clear()
    spec.env.update(redacted)
    return spec


def retry_policy(row: models.Profile) -> profile_pb2.RetryPolicy:
    """Return the RetryPolicy message of a profile row (unset backoffs stay unset)."""
    return profile_pb2.RetryPolicy(
        max_attempts=row.retry_max_attempts or 0,
        initial_backoff=duration(row.retry_initial_backoff_seconds),
        max_backoff=duration(row.retry_max_backoff_seconds),
    )


def profile(row: models.Profile) -> profile_pb2.Profile:
    """Return the Profile message of a row (env values redacted)."""
    return profile_pb2.Profile(
        name=row.name,
        executor=profile_pb2.Executor.Value("EXECUTOR_" + row.executor.upper()),
        sandbox_spec=redacted_spec(row.sandbox_spec or {}),
        max_in_progress=row.max_in_progress,
        keep_sandbox=row.keep_sandbox,
        default_max_runtime=duration(row.default_max_runtime_seconds),
        description=row.description,
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
        retry_policy=retry_policy(row),
        allowed_images=list(row.allowed_images or []),
        warm_pool_size=row.warm_pool_size,
    )


def _backoff(policy: profile_pb2.RetryPolicy, name: str) -> float | None:
    """A backoff in seconds; unset and zero both mean "the dispatcher's default"."""
    if not policy.HasField(name):  # type: ignore[arg-type]
        return None
    seconds = seconds_of(getattr(policy, name), f"profile.retry_policy.{name}")
    return seconds or None


def profile_values(msg: profile_pb2.Profile, fields: Sequence[str] | None = None) -> dict[str, Any]:
    """Return column values from a Profile message (all, or only ``fields``)."""
    values: dict[str, Any] = {}
    wanted = set(fields) if fields is not None else None

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    if want("executor"):
        values["executor"] = executor_name(msg.executor)
    if want("sandbox_spec"):
        values["sandbox_spec"] = spec_json(msg.sandbox_spec)
    if want("max_in_progress"):
        values["max_in_progress"] = msg.max_in_progress
    if want("keep_sandbox"):
        values["keep_sandbox"] = msg.keep_sandbox
    if want("default_max_runtime"):
        values["default_max_runtime_seconds"] = (
            seconds_of(msg.default_max_runtime, "profile.default_max_runtime")
            if msg.HasField("default_max_runtime")
            else None
        )
    if want("description"):
        values["description"] = msg.description
    if want("retry_policy"):
        policy = msg.retry_policy
        values["retry_max_attempts"] = policy.max_attempts
        values["retry_initial_backoff_seconds"] = _backoff(policy, "initial_backoff")
        values["retry_max_backoff_seconds"] = _backoff(policy, "max_backoff")
    if want("allowed_images"):
        values["allowed_images"] = list(msg.allowed_images)
    if want("warm_pool_size"):
        values["warm_pool_size"] = msg.warm_pool_size
    return values


def trace_id_of(trace_parent: str) -> str:
    """Return the trace id of a W3C traceparent header, or ''."""
    parts = trace_parent.split("-")
    return parts[1] if len(parts) >= 4 else ""


def task(
    row: models.Task,
    parent_ids: Sequence[str] = (),
    readiness: task_pb2.Readiness | None = None,
) -> task_pb2.Task:
    """Return the Task message of a row (env values redacted)."""
    return task_pb2.Task(
        task_id=row.task_id,
        board_id=row.board_id,
        title=row.title,
        description=row.description,
        status=task_status_value(row.status),
        assignee=row.assignee or "",
        priority=row.priority,
        command=list(row.command or []),
        image=row.image,
        env=secrets.redact(row.env or {}),
        max_runtime=duration(row.max_runtime_seconds),
        parent_ids=list(parent_ids),
        labels=dict(row.labels or {}),
        blocked_reason=row.blocked_reason,
        failure_count=row.failure_count,
        current_run_id=row.current_run_id or "",
        trace_id=trace_id_of(row.trace_parent),
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
        readiness=readiness,
        sandbox_id=row.sandbox_id,
        next_attempt_time=timestamp(row.next_attempt_time),
    )


TASK_MASK_FIELDS = {
    "title": "title",
    "description": "description",
    "priority": "priority",
    "command": "command",
    "image": "image",
    "env": "env",
    "max_runtime": "max_runtime_seconds",
    "labels": "labels",
}


def task_values(msg: task_pb2.Task, fields: Sequence[str]) -> dict[str, Any]:
    """Return column values of the Task message's ``fields`` (proto names).

    Raises:
        InvalidArgument: A field is unknown or output-only.
    """
    values: dict[str, Any] = {}
    for name in fields:
        if name not in TASK_MASK_FIELDS:
            raise InvalidArgument(f"update_mask: {name!r} is unknown or output-only")
        if name == "max_runtime":
            values["max_runtime_seconds"] = (
                seconds_of(msg.max_runtime, "task.max_runtime")
                if msg.HasField("max_runtime")
                else None
            )
        elif name in ("command",):
            values[name] = list(msg.command)
        elif name in ("env", "labels"):
            values[name] = dict(getattr(msg, name))
        else:
            values[TASK_MASK_FIELDS[name]] = getattr(msg, name)
    return values


def new_task_values(t: task_pb2.Task) -> dict[str, Any]:
    """The column values a create stores for ``t`` (CreateTask's, and ClaimTask's ``create``).

    The task remembers the trace it was created in (its runs link to it).

    Raises:
        InvalidArgument: A bad status, max runtime or env name.
        OutOfRange: A max runtime past the Duration range.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    values: dict[str, Any] = {
        "board_id": t.board_id or models.DEFAULT_BOARD,
        "title": t.title,
        "description": t.description,
        "assignee": t.assignee or None,
        "priority": t.priority,
        "command": list(t.command),
        "image": t.image,
        "env": secrets.merge({}, t.env, "task.env"),
        "labels": dict(t.labels),
        "trace_parent": carrier.get("traceparent", ""),
    }
    if t.status:
        values["status"] = task_status_name(t.status)
    if t.HasField("max_runtime"):
        values["max_runtime_seconds"] = seconds_of(t.max_runtime, "task.max_runtime")
    return values


def run(row: models.TaskRun) -> run_pb2.TaskRun:
    """Return the TaskRun message of a row."""
    return run_pb2.TaskRun(
        run_id=row.run_id,
        task_id=row.task_id,
        profile=row.profile,
        status=run_pb2.RunStatus.Value("RUN_STATUS_" + row.status.upper()),
        worker_id=row.worker_id,
        sandbox_id=row.sandbox_id,
        start_time=timestamp(row.start_time),
        end_time=timestamp(row.end_time),
        lease_expire_time=timestamp(row.lease_expire_time),
        exit_code=row.exit_code or 0,
        error=row.error,
        output_bytes=row.output_bytes,
        output_truncated=row.output_truncated,
        counted_failure=row.counted_failure,
        failure_class=failure_class(row.failure_class),
        holder=row.holder or "",
    )


def failure_class(stored: str) -> run_pb2.FailureClass.ValueType:
    """Return the ``FailureClass`` of a stored class (``work``, ``platform`` or empty)."""
    name = "FAILURE_CLASS_" + (stored or "unspecified").upper()
    if name not in set(run_pb2.FailureClass.keys()):
        return run_pb2.FAILURE_CLASS_UNSPECIFIED
    return run_pb2.FailureClass.Value(name)


def event(row: models.TaskEvent) -> event_pb2.TaskEvent:
    """Return the TaskEvent message of a row."""
    msg = event_pb2.TaskEvent(
        event_id=row.event_id,
        task_id=row.task_id,
        board_id=row.board_id,
        kind=row.kind,
        source=row.source,
        create_time=timestamp(row.create_time),
        run_id=row.run_id,
    )
    msg.payload.update(row.payload or {})
    return msg


def comment(row: models.Comment) -> comment_pb2.Comment:
    """Return the Comment message of a row."""
    return comment_pb2.Comment(
        comment_id=row.comment_id,
        task_id=row.task_id,
        author=row.author,
        body=row.body,
        create_time=timestamp(row.create_time),
    )
