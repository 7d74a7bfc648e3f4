"""Sandbox tokens: minted and verified under the internal credential, refused when off."""

from __future__ import annotations

import dataclasses

import pytest
from longshore.sandbox.v1 import sandbox_pb2

from services.runtime.callers import caller_from_metadata, caller_metadata
from services.runtime.errors import PermissionDenied
from services.runtime.sandbox_tokens import SandboxGrant, SandboxTokens, spec_digest

GRANT = SandboxGrant(
    deployment="default",
    task_id="t_1",
    profile="builder",
    run_id="r_1",
    spec_digest="ab" * 32,
    expires=1_000.0,
)


def test_a_minted_token_verifies_to_its_grant() -> None:
    tokens = SandboxTokens("internal")
    assert tokens.verify(tokens.mint(GRANT), now=999.0) == GRANT


@pytest.mark.parametrize(
    ("token", "needle"),
    [
        ("", "sandbox token required"),
        ("nope", "malformed"),
        ("lst1.a.b.c", "malformed"),
        ("x" * 5000, "too long"),
    ],
)
def test_malformed_tokens_are_refused(token: str, needle: str) -> None:
    with pytest.raises(PermissionDenied, match=needle):
        SandboxTokens("internal").verify(token, now=0.0)


def test_a_token_signed_under_another_credential_is_forged() -> None:
    token = SandboxTokens("other").mint(GRANT)
    with pytest.raises(PermissionDenied, match="bad signature"):
        SandboxTokens("internal").verify(token, now=0.0)


def test_changed_claims_break_the_signature() -> None:
    tokens = SandboxTokens("internal")
    prefix, _body, signature = tokens.mint(GRANT).split(".")
    _p, other_body, _s = tokens.mint(dataclasses.replace(GRANT, task_id="t_2")).split(".")
    with pytest.raises(PermissionDenied, match="bad signature"):
        tokens.verify(f"{prefix}.{other_body}.{signature}", now=0.0)


def test_an_expired_token_is_refused_naming_the_run() -> None:
    tokens = SandboxTokens("internal")
    with pytest.raises(PermissionDenied, match=r"run 'r_1'.*expired"):
        tokens.verify(tokens.mint(GRANT), now=1_000.0)


def test_the_spec_digest_covers_env_values_and_ignores_map_order() -> None:
    a = sandbox_pb2.SandboxSpec(image="img", env={"A": "1", "B": "2"})
    b = sandbox_pb2.SandboxSpec(image="img", env={"B": "2", "A": "1"})
    c = sandbox_pb2.SandboxSpec(image="img", env={"A": "1", "B": "3"})
    assert spec_digest(a) == spec_digest(b) != spec_digest(c)


def test_callers_round_trip_through_metadata() -> None:
    who = caller_from_metadata(caller_metadata("ci", {"worker", "read"}))
    assert (who.principal, who.scopes) == ("ci", frozenset({"read", "worker"}))
    assert not who.is_operator
    assert caller_from_metadata(caller_metadata("ops", {"admin"})).is_operator
    direct = caller_from_metadata(())
    assert direct.is_service and direct.is_operator
