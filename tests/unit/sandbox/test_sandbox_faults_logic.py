"""Unit cases of the fault handling: owner liveness, engine error mapping, the engine
probe, page tokens and duration bounds (fakes here; the real engine in integration)."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import docker.errors
import pytest
import requests
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import sandbox_service_pb2

from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from services.sandbox import convert, leftovers
from services.sandbox.docker_client import NameTaken, translate, unreachable_reason
from services.sandbox.engine_health import EngineHealth
from services.sandbox.owners import Identity, Liveness, current_owner, owner_of_marker


def fake_proc(root: Path, pids: dict[int, str]) -> Path:
    """A /proc with the given pid -> start ticks (field 22 of stat)."""
    for pid, start in pids.items():
        (root / str(pid)).mkdir(parents=True)
        rest = " ".join(["S"] + ["0"] * 18 + [start] + ["0"] * 5)
        (root / str(pid) / "stat").write_text(f"{pid} (my (odd) cmd) {rest}\n")
    return root


def test_process_owner_is_dead_when_its_pid_is_gone_or_reused(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {40: "1234", 41: "999"})
    me = Identity(boot_id="abcdefabcdef", pid_namespace="4026531836", proc=proc)
    live = Liveness(lambda cid: None, me)
    alive = "host.pabcdefabcdef.4026531836.40.1234"
    reused = "host.pabcdefabcdef.4026531836.41.1234"
    gone = "host.pabcdefabcdef.4026531836.42.1234"
    assert not live.is_dead(alive)
    assert live.is_dead(reused)
    assert live.is_dead(gone)


def test_owners_we_cannot_judge_are_not_dead(tmp_path: Path) -> None:
    me = Identity(boot_id="abcdefabcdef", pid_namespace="1", proc=fake_proc(tmp_path, {}))
    live = Liveness(lambda cid: None, me)
    assert not live.is_dead("host.pabcdefabcdef.2.42.1234")  # another pid namespace
    assert not live.is_dead("host.p000000000000.1.42.1234")  # another kernel boot
    assert not live.is_dead("someone-else")  # not written by this module
    assert not live.is_dead("")


def test_container_owner_is_dead_when_gone_stopped_or_restarted() -> None:
    started = "2026-12-01T23:00:00.123456789Z"
    records: dict[str, dict[str, object] | None] = {
        "aaaaaaaaaaaa": {"State": {"Running": True, "StartedAt": started}},
        "bbbbbbbbbbbb": {"State": {"Running": True, "StartedAt": "2026-12-01T23:05:00.1Z"}},
        "cccccccccccc": {"State": {"Running": False, "StartedAt": started}},
        "dddddddddddd": None,
    }
    live = Liveness(lambda cid: records[cid], Identity("x", "y"))
    digits = "20261201230000123456789"
    assert not live.is_dead(f"h.caaaaaaaaaaaa.{digits}")
    assert live.is_dead(f"h.cbbbbbbbbbbbb.{digits}")  # compose restart: same name, new start
    assert live.is_dead(f"h.ccccccccccccc.{digits}")
    assert live.is_dead(f"h.cdddddddddddd.{digits}")


def test_engine_trouble_is_unknown_not_dead() -> None:
    def broken(cid: str) -> None:
        raise Unavailable("docker engine unreachable")

    live = Liveness(broken, Identity("x", "y"))
    assert not live.is_dead("h.caaaaaaaaaaaa.20261201230000123456789")


def test_current_owner_is_label_safe_and_judged_alive_by_this_process() -> None:
    owner = current_owner()
    assert len(owner) <= 63 and all(c.isalnum() or c in "._-" for c in owner)
    assert f".{os.getpid()}." in owner
    assert not Liveness(lambda cid: None).is_dead(owner)
    assert owner_of_marker(f"{owner}~abc123") == owner
    assert owner_of_marker("no-separator") == ""


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("engine said no", response=response, explanation=explanation)


@pytest.mark.parametrize(
    ("status", "explanation", "expected"),
    [
        (400, "invalid reference format", InvalidArgument),
        (404, "No such container: x", NotFound),
        (409, 'Conflict. The container name "/x" is already in use by container', NameTaken),
        (409, "Container abc is not running", FailedPrecondition),
        (409, "removal of container abc is already in progress", FailedPrecondition),
        (403, "forbidden", FailedPrecondition),
        (500, "OCI runtime exec failed: read init-p: connection reset by peer", FailedPrecondition),
        (503, "service unavailable", Unavailable),
    ],
)
def test_engine_answers_map_to_typed_errors(
    status: int, explanation: str, expected: type[Exception]
) -> None:
    typed = translate(api_error(status, explanation), "containers.create", resource="sandbox 'x'")
    assert type(typed) is expected
    if expected not in (NotFound,):
        assert explanation[:40] in str(typed) or "not running" in str(typed)


def test_engine_messages_are_cut_and_transport_failures_unavailable() -> None:
    typed = translate(api_error(400, "x" * 5000), "containers.create")
    assert isinstance(typed, InvalidArgument) and len(typed.message) < 300
    refused = requests.exceptions.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    typed = translate(refused, "containers.list")
    assert isinstance(typed, Unavailable)
    assert typed.message == "docker engine unreachable during containers.list: connection refused"
    assert isinstance(translate(requests.exceptions.ReadTimeout(), "ping"), Unavailable)
    assert translate(KeyError("x"), "ping") is None
    assert unreachable_reason(refused) == "connection refused"


def test_missing_image_names_it_quoted() -> None:
    typed = translate(api_error(404, "No such image: a"), "containers.create", image="a" * 500)
    assert isinstance(typed, FailedPrecondition) and "a" * 101 not in typed.message


def test_engine_probe_reports_changes_once_and_fails_fast() -> None:
    answers = [None, ConnectionRefusedError(111, "Connection refused"), None]
    changes: list[tuple[bool, str]] = []

    def ping() -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    health = EngineHealth(ping, lambda s, d: changes.append((s, d)), interval_seconds=60)
    assert health.probe()
    health.check()
    assert not health.probe()
    with pytest.raises(Unavailable) as err:
        health.check()
    assert "docker engine unreachable: connection refused" in err.value.message
    assert health.probe()
    assert changes == [
        (True, ""),
        (False, "docker engine unreachable: connection refused"),
        (True, ""),
    ]


def test_engine_probe_thread_stops() -> None:
    pinged = threading.Event()
    health = EngineHealth(pinged.set, lambda s, d: None, interval_seconds=0.01)
    health.start()
    assert pinged.wait(10)
    health.stop()


def token(raw: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode()


def test_page_tokens_round_trip_and_forgeries_are_invalid_argument() -> None:
    assert convert.decode_page_token(token({"c": 5, "i": "abc"})) == (5, "abc")
    for forged in [
        token({"c": 2**64, "i": "a"}),
        token({"c": 1, "i": "a", "x": 1}),
        token({"c": 1.5, "i": "a"}),
        token({"c": 1, "i": "a" * 500}),
        "=" * 3,
    ]:
        with pytest.raises(InvalidArgument, match="page_token: "):
            convert.decode_page_token(forged)


def test_durations_are_checked_before_conversion() -> None:
    huge = duration_pb2.Duration(seconds=2**62)
    with pytest.raises(OutOfRange, match="timeout: "):
        convert.exec_from_proto(sandbox_service_pb2.ExecRequest(argv=["x"], timeout=huge))
    with pytest.raises(OutOfRange, match="max_age: "):
        convert.max_age_from_proto(sandbox_service_pb2.ReapOrphansRequest(max_age=huge))
    with pytest.raises(InvalidArgument, match="timeout: "):
        convert.duration_seconds(duration_pb2.Duration(seconds=1, nanos=2_000_000_000), "timeout")
    ok = convert.max_age_from_proto(
        sandbox_service_pb2.ReapOrphansRequest(max_age=duration_pb2.Duration(seconds=90))
    )
    assert ok is not None and ok.total_seconds() == 90


class FakeManager:
    """What the leftover sweep needs from a manager, recording what it did."""

    def __init__(self, *, at_limit: bool, dead: set[str]) -> None:
        self.api = object()
        self.owner = "me"
        self._at_limit = at_limit
        self._dead = dead
        self.restarted: list[str] = []
        self.liveness = self

    def is_dead(self, owner: str) -> bool:
        return owner in self._dead

    def config_user(self, cid: str) -> str:
        return "1000"

    def at_pids_limit(self, cid: str) -> bool:
        return self._at_limit

    def restart(self, cid: str, *, reason: str) -> None:
        self.restarted.append(cid)


@pytest.mark.parametrize("at_limit", [True, False])
def test_unlistable_sandbox_is_restarted_only_at_its_pids_limit(
    monkeypatch: pytest.MonkeyPatch, at_limit: bool
) -> None:
    monkeypatch.setattr(leftovers, "list_markers", lambda api, cid, user: None)
    manager = FakeManager(at_limit=at_limit, dead=set())
    report = leftovers.LeftoverReport()
    leftovers.end_orphaned_execs(manager, "c1", report)  # type: ignore[arg-type]
    assert manager.restarted == (["c1"] if at_limit else [])
    assert bool(report.errors) is not at_limit


def test_only_dead_owners_execs_are_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[tuple[str, str]] = []
    monkeypatch.setattr(
        leftovers, "list_markers", lambda api, cid, user: ["dead~1", "alive~2", "me~3", "x"]
    )

    def kill(api: object, cid: str, args: list[str], user: str) -> str:
        killed.append((args[1], user))
        return "longshore-kill-done 1"

    monkeypatch.setattr(leftovers, "run_killer", kill)
    manager = FakeManager(at_limit=False, dead={"dead"})
    report = leftovers.LeftoverReport()
    leftovers.end_orphaned_execs(manager, "c1", report)  # type: ignore[arg-type]
    # Swept as the sandbox's user and as root; only the dead owner's exec goes, once.
    assert killed == [("dead~1", "1000")]
    assert report.execs_ended == 1 and not manager.restarted
