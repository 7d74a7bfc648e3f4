"""Pure rules of pause, snapshots and leases: idle pause, lease requests, snapshot names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import lifecycle_pb2, sandbox_pb2

from services.runtime.errors import InvalidArgument, OutOfRange, PermissionDenied
from services.sandbox import convert
from services.sandbox.lifecycle.leases import Lease
from services.sandbox.lifecycle.snapshots import repository_part
from services.sandbox.model import SandboxInfo
from services.sandbox.policy import check_snapshot_image
from services.sandbox.reaper import idle_action
from services.sandbox.settings import SandboxSection

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def decide(idle_seconds: float, *, stop: int = 0, pause: int = 0, seen: bool = True) -> str:
    return idle_action(
        persist=True,
        reference=NOW - timedelta(seconds=idle_seconds),
        seen_here=seen,
        busy=False,
        now=NOW,
        lifetime_seconds=300,
        idle_stop_seconds=stop,
        foreign_grace_seconds=600,
        pause_idle_seconds=pause,
    )[0]


def test_idle_pause_comes_before_stop_and_stop_wins_when_due() -> None:
    assert decide(30, pause=60) == "keep"
    assert decide(90, pause=60) == "pause"
    assert decide(90, pause=60, seen=False) == "keep"  # another manager may be using it
    assert decide(90, pause=60, stop=120) == "pause"
    assert decide(150, pause=60, stop=120) == "stop"
    assert decide(150) == "keep"  # both off
    # Non-persistent sandboxes are removed, never paused.
    assert (
        idle_action(
            persist=False,
            reference=NOW - timedelta(seconds=400),
            seen_here=True,
            busy=False,
            now=NOW,
            lifetime_seconds=300,
            idle_stop_seconds=0,
            foreign_grace_seconds=600,
            pause_idle_seconds=60,
        )[0]
        == "remove"
    )


def lease(**fields: object) -> lifecycle_pb2.SetSandboxLeaseRequest:
    return lifecycle_pb2.SetSandboxLeaseRequest(sandbox_id="s", **fields)  # type: ignore[arg-type]


def test_lease_requests() -> None:
    ten = duration_pb2.Duration(seconds=10)
    assert convert.lease_from_proto(lease(ttl=ten), max_seconds=60, default_action="pause") == (
        timedelta(seconds=10),
        "pause",
    )
    removal = lease(ttl=ten, on_expiry=sandbox_pb2.LEASE_EXPIRY_REMOVE)
    assert convert.lease_from_proto(removal, max_seconds=60, default_action="pause")[1] == "remove"
    for bad, error in (
        (lease(), InvalidArgument),
        (lease(ttl=duration_pb2.Duration(nanos=999_999_999)), InvalidArgument),
        (lease(ttl=duration_pb2.Duration(seconds=-5)), InvalidArgument),
        (lease(ttl=duration_pb2.Duration(seconds=1, nanos=-1)), InvalidArgument),
        (lease(ttl=duration_pb2.Duration(seconds=315_576_000_000)), OutOfRange),
        (lease(ttl=duration_pb2.Duration(seconds=61)), OutOfRange),
        (lease(ttl=ten, on_expiry=9), InvalidArgument),
    ):
        with pytest.raises(error):
            convert.lease_from_proto(bad, max_seconds=60, default_action="pause")


def test_rows_carry_the_lease() -> None:
    info = SandboxInfo(sandbox_id="a" * 64, name="n", state="paused", image="i", labels={})
    row = convert.sandbox_to_proto(info, Lease(NOW, "remove"))
    assert row.state == sandbox_pb2.SANDBOX_STATE_PAUSED
    assert row.lease_expire_time.ToDatetime(UTC) == NOW
    assert row.lease_expiry == sandbox_pb2.LEASE_EXPIRY_REMOVE
    assert not convert.sandbox_to_proto(info).HasField("lease_expire_time")


def test_snapshot_repository_names_are_valid_and_injective() -> None:
    assert repository_part("prod") == "prod"
    assert repository_part("Prod") != repository_part("prod")
    assert repository_part("a_b") != repository_part("a-b")
    assert all(c.islower() or c.isdigit() or c == "-" for c in repository_part("X y/Z" * 20))


def test_snapshot_images_of_another_deployment_are_refused() -> None:
    section = SandboxSection()
    ours = "longshore-snapshot/prod"
    check_snapshot_image("longshore-snapshot/prod:abc", ours, section)
    check_snapshot_image("busybox:1", ours, section)
    with pytest.raises(PermissionDenied, match="another deployment"):
        check_snapshot_image("longshore-snapshot/staging:abc", ours, section)
    with pytest.raises(PermissionDenied):
        check_snapshot_image("longshore-snapshot/prod-2:abc", ours, section)


def test_settings_refuse_a_bad_expiry_action_and_repository() -> None:
    with pytest.raises(ValueError, match="lease_expiry_action"):
        SandboxSection(lease_expiry_action="explode")
    with pytest.raises(ValueError, match="snapshot_repository"):
        SandboxSection(snapshot_repository="Bad Repo")
    with pytest.raises(ValueError, match="max_snapshots"):
        SandboxSection(max_snapshots=0)


def test_the_cli_lease_column() -> None:
    from clients.cli.commands.sandbox import _lease

    box = sandbox_pb2.Sandbox()
    assert _lease(box) == "-"
    box.lease_expire_time.FromDatetime(datetime.now(UTC) + timedelta(minutes=5, seconds=30))
    box.lease_expiry = sandbox_pb2.LEASE_EXPIRY_REMOVE
    assert _lease(box) == "remove in 5m"
    box.lease_expire_time.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
    assert _lease(box) == "due (remove)"
