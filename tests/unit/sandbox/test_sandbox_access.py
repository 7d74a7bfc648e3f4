"""Who may use which sandbox, decided on a grant and the sandbox's labels (no engine)."""

from __future__ import annotations

import pytest
from longshore.sandbox.v1 import sandbox_pb2

from services.runtime.errors import PermissionDenied
from services.runtime.sandbox_tokens import SandboxGrant, spec_digest
from services.sandbox import labels
from services.sandbox.access import SandboxAccess, short_id
from services.sandbox.model import SandboxInfo

SPEC = sandbox_pb2.SandboxSpec(user="1000")
GRANT = SandboxGrant(
    deployment="d",
    task_id="t/1",
    profile="coder",
    run_id="r1",
    spec_digest=spec_digest(SPEC),
    expires=1e12,
    holder="w1",
)
ACCESS = SandboxAccess("internal", "d")


def box(task: str = "t/1", profile: str = "coder", user: str = "1000") -> SandboxInfo:
    lbl = {labels.TASK_ID: labels.sanitize(task), labels.PROFILE: labels.sanitize(profile)}
    return SandboxInfo("f" * 64, "n", "running", "img", lbl, user=user)


def test_an_operator_has_no_grant_and_passes_every_check() -> None:
    ACCESS.check_acquire(None, "any", "any", sandbox_pb2.SandboxSpec(user="0"))
    ACCESS.check_sandbox(None, box(task="other"), exec_user="0")


def test_the_grant_admits_its_own_task_spec_and_user() -> None:
    ACCESS.check_acquire(GRANT, "t/1", "coder", SPEC)
    ACCESS.check_sandbox(GRANT, box())  # labels are compared in their sanitised form
    ACCESS.check_sandbox(GRANT, box(), exec_user="1000")


@pytest.mark.parametrize(
    ("task", "profile", "spec", "message"),
    [
        ("t2", "coder", SPEC, "is for task 't/1' under profile 'coder', not task 't2'"),
        ("t/1", "p2", SPEC, "not task 't/1' under profile 'p2'"),
        ("t/1", "coder", sandbox_pb2.SandboxSpec(user="0"), "spec: differs from the sandbox_spec"),
        ("t/1", "coder", sandbox_pb2.SandboxSpec(), "spec: differs"),
    ],
)
def test_acquire_outside_the_grant_is_refused(
    task: str, profile: str, spec: sandbox_pb2.SandboxSpec, message: str
) -> None:
    with pytest.raises(PermissionDenied) as info:
        ACCESS.check_acquire(GRANT, task, profile, spec)
    assert message in info.value.message


def test_another_tasks_or_profiles_sandbox_is_refused() -> None:
    with pytest.raises(PermissionDenied) as info:
        ACCESS.check_sandbox(GRANT, box(task="t2"))
    assert info.value.message.startswith(
        "sandbox 'ffffffffffff…' belongs to task 't2' under profile 'coder', "
        "not to run 'r1''s task 't/1'"
    )
    with pytest.raises(PermissionDenied, match="under profile 'other'"):
        ACCESS.check_sandbox(GRANT, box(profile="other"))


@pytest.mark.parametrize(
    ("sandbox_user", "asked", "message"),
    [
        ("1000", "0", "user: '0' differs from the sandbox's user '1000'"),
        ("1000", "root", "user: 'root' differs"),
        ("", "0", "user: '0' differs from the sandbox's user '(image default)'"),
    ],
)
def test_exec_as_another_user_is_refused(sandbox_user: str, asked: str, message: str) -> None:
    with pytest.raises(PermissionDenied) as info:
        ACCESS.check_sandbox(GRANT, box(user=sandbox_user), exec_user=asked)
    assert info.value.message.startswith(message)


def test_short_ids() -> None:
    assert short_id("abc") == "abc" and short_id("a" * 64) == "a" * 12 + "…"
