"""API keys: parsing the configured entries, authentication and scopes."""

from __future__ import annotations

import grpc
import pytest

from services.gateway.auth import (
    ApiKeyFormatError,
    KeyRing,
    bearer_token,
    hash_key,
    key_entry,
    main,
    new_key,
    parse_entries,
)
from services.runtime.errors import PermissionDenied, Unauthenticated

GET_TASK = "/longshore.kanban.v1.KanbanService/GetTask"
CREATE_TASK = "/longshore.kanban.v1.KanbanService/CreateTask"
CLAIM = "/longshore.kanban.v1.WorkerService/ClaimTask"
EXEC = "/longshore.sandbox.v1.SandboxService/Exec"


def _auth(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def test_entries_store_only_the_hash() -> None:
    key = new_key()
    entry = key_entry("ci", ["read", "write"], key)
    assert key not in entry
    assert entry.endswith(hash_key(key))
    principals = parse_entries([entry])
    assert principals[hash_key(key)].name == "ci"
    assert principals[hash_key(key)].scopes == {"read", "write"}


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("nohash", "expected 'name:scope+scope:sha256hex'"),
        ("bad name:read:" + "a" * 64, "bad key name"),
        ("ci:fly:" + "a" * 64, "unknown or missing scopes ['fly']"),
        ("ci::" + "a" * 64, "unknown or missing scopes"),
        ("ci:read:abc", "64 hex characters"),
    ],
)
def test_malformed_entries_are_refused_by_position(entry: str, fragment: str) -> None:
    with pytest.raises(ApiKeyFormatError, match=r"gateway\.api_keys\[0\]") as info:
        parse_entries([entry])
    assert fragment in str(info.value)


def test_duplicate_names_or_hashes_are_refused() -> None:
    one = key_entry("a", ["read"], "k1")
    with pytest.raises(ApiKeyFormatError, match="duplicate"):
        parse_entries([one, key_entry("a", ["read"], "k2")])
    with pytest.raises(ApiKeyFormatError, match="duplicate"):
        parse_entries([one, key_entry("b", ["read"], "k1")])


def test_bearer_token_is_read_case_insensitively() -> None:
    assert bearer_token([("authorization", "bearer abc")]) == "abc"
    assert bearer_token([("authorization", b"Bearer xyz ")]) == "xyz"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([("x-other", "Bearer abc")]) is None


def test_missing_and_unknown_keys_are_unauthenticated() -> None:
    ring = KeyRing.from_entries([key_entry("ci", ["read"], "secret")])
    with pytest.raises(Unauthenticated, match="missing API key"):
        ring.authorize([], GET_TASK)
    with pytest.raises(Unauthenticated, match="unknown API key"):
        ring.authorize(_auth("wrong"), GET_TASK)
    assert Unauthenticated.code == grpc.StatusCode.UNAUTHENTICATED


def test_missing_scope_names_the_scope_needed() -> None:
    ring = KeyRing.from_entries([key_entry("viewer", ["read"], "secret")])
    assert ring.authorize(_auth("secret"), GET_TASK).name == "viewer"
    with pytest.raises(PermissionDenied, match="needs scope 'write'; key 'viewer' has read"):
        ring.authorize(_auth("secret"), CREATE_TASK)
    with pytest.raises(PermissionDenied, match="'write' or 'worker'"):
        ring.authorize(_auth("secret"), EXEC)


def test_admin_holds_every_scope_and_worker_reaches_sandboxes() -> None:
    ring = KeyRing.from_entries(
        [key_entry("root", ["admin"], "adm"), key_entry("bot", ["worker"], "wrk")]
    )
    for method in (GET_TASK, CREATE_TASK, CLAIM, EXEC):
        ring.authorize(_auth("adm"), method)
    ring.authorize(_auth("wrk"), CLAIM)
    ring.authorize(_auth("wrk"), EXEC)
    with pytest.raises(PermissionDenied):
        ring.authorize(_auth("wrk"), CREATE_TASK)


def test_unknown_methods_need_admin() -> None:
    ring = KeyRing.from_entries([key_entry("rw", ["read", "write", "worker"], "k")])
    with pytest.raises(PermissionDenied, match="'admin'"):
        ring.authorize(_auth("k"), "/longshore.kanban.v1.KanbanService/Future")


def test_key_tool_prints_a_key_and_its_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ci", "read+write"]) == 0
    out = capsys.readouterr().out
    key = out.split("key:")[1].split()[0]
    entry = out.split("entry:")[1].split()[0]
    assert parse_entries([entry])[hash_key(key)].scopes == {"read", "write"}
    assert main([]) == 2
