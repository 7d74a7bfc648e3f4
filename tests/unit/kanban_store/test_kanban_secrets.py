"""Env values are write-only: redaction, the keep-on-`<redacted>` merge, names, holders."""

from __future__ import annotations

import datetime as dt

import pytest
from longshore.kanban.v1 import run_pb2

from services.kanban import convert, models, secrets
from services.kanban.store import profiles
from services.kanban.worker_server import check_holder, run_spec
from services.runtime.callers import Caller
from services.runtime.errors import InvalidArgument, PermissionDenied

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_redact_keeps_names_and_hides_every_value() -> None:
    assert secrets.redact({"TOKEN": "s3cret", "EMPTY": ""}) == {
        "TOKEN": "<redacted>",
        "EMPTY": "<redacted>",
    }
    assert secrets.redact({}) == {}


def test_merge_keeps_stored_values_sent_back_redacted_and_drops_absent_names() -> None:
    stored = {"KEEP": "old", "CHANGE": "old", "DROP": "old"}
    written = {"KEEP": secrets.REDACTED, "CHANGE": "new", "ADD": "added"}
    assert secrets.merge(stored, written, "task.env") == {
        "KEEP": "old",
        "CHANGE": "new",
        "ADD": "added",
    }


def test_merge_refuses_the_marker_for_a_new_name_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as exc:
        secrets.merge(
            {"A": "1"}, {"A": secrets.REDACTED, "X": secrets.REDACTED}, "sandbox_spec.env"
        )
    assert exc.value.message == "sandbox_spec.env['X']: '<redacted>' is reserved"


@pytest.mark.parametrize("name", ["A=B", "1X", "", "A-B", "É", "A B"])
def test_names_follow_the_sandbox_managers_rule(name: str) -> None:
    with pytest.raises(InvalidArgument, match=r"task\.env: invalid variable name"):
        secrets.merge({}, {name: "v"}, "task.env")


def test_long_names_are_quoted_short_in_errors() -> None:
    with pytest.raises(InvalidArgument) as exc:
        secrets.check_names({"-" * 5000: "v"}, "task.env")
    assert len(exc.value.message) < 200


def _profile(**kw: object) -> models.Profile:
    values: dict[str, object] = {
        "name": "p",
        "executor": "external",
        "sandbox_spec": {"image": "base:1", "env": {"P": "profile-secret"}},
        "max_in_progress": 0,
        "keep_sandbox": False,
        "description": "",
        "retry_max_attempts": 0,
        "allowed_images": ["extra:2"],
        "create_time": NOW,
        "update_time": NOW,
    }
    values.update(kw)
    return models.Profile(**values)


def test_profile_and_task_messages_are_redacted_but_rows_are_not() -> None:
    row = _profile()
    assert dict(convert.profile(row).sandbox_spec.env) == {"P": "<redacted>"}
    assert row.sandbox_spec["env"] == {"P": "profile-secret"}
    task = models.Task(
        task_id="t_1",
        board_id="default",
        title="t",
        description="",
        status="ready",
        priority=0,
        image="",
        env={"T": "task-secret"},
        labels={},
        blocked_reason="",
        failure_count=0,
        trace_parent="",
        sandbox_id="",
        create_time=NOW,
        update_time=NOW,
    )
    assert dict(convert.task(task).env) == {"T": "<redacted>"}
    spec = run_spec(task, row)
    assert dict(spec.env) == {"P": "profile-secret", "T": "task-secret"}
    assert spec.image == "base:1"


def test_merged_spec_keeps_profile_values_through_a_round_trip() -> None:
    stored = {"image": "base:1", "env": {"P": "profile-secret"}}
    read_back = convert.spec_json(convert.redacted_spec(stored))
    assert profiles.merged_spec(stored, read_back) == stored
    assert profiles.merged_spec(stored, {"image": "base:2"}) == {"image": "base:2"}


def test_task_images_must_be_the_profiles_or_allowed() -> None:
    row = _profile()
    for ok in ("", "base:1", "extra:2"):
        profiles.check_image(row, ok)
    with pytest.raises(PermissionDenied) as exc:
        profiles.check_image(row, "evil:latest")
    assert exc.value.message == "image: 'evil:latest' is not allowed for profile 'p'"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"retry_max_attempts": 101}, "profile.retry_policy.max_attempts"),
        ({"retry_max_attempts": -1}, "profile.retry_policy.max_attempts"),
        ({"retry_initial_backoff_seconds": 86401.0}, "profile.retry_policy.initial_backoff"),
        ({"retry_max_backoff_seconds": 90000.0}, "profile.retry_policy.max_backoff"),
        (
            {"retry_initial_backoff_seconds": 60.0, "retry_max_backoff_seconds": 30.0},
            "profile.retry_policy.initial_backoff",
        ),
        ({"allowed_images": ["x"] * 33}, "profile.allowed_images"),
        ({"allowed_images": ["a b"]}, "profile.allowed_images[0]"),
        ({"allowed_images": ["ok", "x" * 256]}, "profile.allowed_images[1]"),
        ({"allowed_images": [""]}, "profile.allowed_images[0]"),
    ],
)
def test_retry_policy_and_allowed_images_bounds(values: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        profiles.validate(values)
    assert exc.value.message.startswith(f"{field}:")


def test_retry_policy_in_range_passes() -> None:
    profiles.validate(
        {
            "retry_max_attempts": 100,
            "retry_initial_backoff_seconds": 1.0,
            "retry_max_backoff_seconds": 86400.0,
            "allowed_images": ["registry.example/x:1"] * 32,
        }
    )


def _run(holder: str, executor_instance: str = "") -> models.TaskRun:
    return models.TaskRun(
        run_id="r_1", task_id="t_1", profile="p", holder=holder, executor_instance=executor_instance
    )


def test_holder_check() -> None:
    w1 = Caller("w1", frozenset({"worker"}))
    w2 = Caller("w2", frozenset({"worker", "admin"}))
    service = Caller("", frozenset())
    check_holder(_run("w1"), w1)
    check_holder(_run("w1"), service)
    with pytest.raises(PermissionDenied) as exc:
        check_holder(_run("w1"), w2)
    assert exc.value.message == "run 'r_1' is held by key 'w1', not by key 'w2'"
    for run in (_run("dispatcher"), _run("", executor_instance="abc123")):
        for who in (w1, service):
            with pytest.raises(PermissionDenied) as exc:
                check_holder(run, who)
            assert exc.value.message == (
                "run 'r_1' is executed by the dispatcher; WorkerService cannot change it"
            )


def test_failure_class_maps_stored_names() -> None:
    assert convert.failure_class("work") == run_pb2.FAILURE_CLASS_WORK
    assert convert.failure_class("platform") == run_pb2.FAILURE_CLASS_PLATFORM
    assert convert.failure_class("") == run_pb2.FAILURE_CLASS_UNSPECIFIED
    assert convert.failure_class("bogus") == run_pb2.FAILURE_CLASS_UNSPECIFIED
