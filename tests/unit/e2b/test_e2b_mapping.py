"""The front door's pure mappings: access tokens, metadata labels, the error table, timeouts."""

from __future__ import annotations

import base64

import grpc
import pytest
from connectrpc.code import Code

from services.e2b import tokens
from services.e2b.errors import TABLE, Problem, connect_error_of, problem_of
from services.e2b.keeper import Keeper
from services.e2b.sandboxes import Sandboxes, metadata_labels, metadata_of
from services.e2b.settings import E2bSection
from services.runtime.errors import InvalidArgument, NotFound, Unauthenticated


def test_access_token_round_trips_sealed_and_refuses_junk() -> None:
    sealer = tokens.Sealer("k" * 40)
    access = tokens.Access(api_key="lsk_abc", run_id="r-1", sandbox_id="c" * 64)
    token = sealer.seal(access)
    assert sealer.open(token) == access
    assert tokens.Sealer("k" * 40).open(token) == access, "replicas sharing the secret open it"
    assert "lsk_abc" not in token and b"lsk_abc" not in base64.urlsafe_b64decode(
        token[len(tokens.PREFIX) :] + "=="
    ), "the key is not readable from the token"
    assert sealer.seal(access) != token, "a fresh nonce per token"
    body = token[len(tokens.PREFIX) :]
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for bad in (
        "",
        tokens.PREFIX,
        tokens.PREFIX + "!!!",
        tokens.PREFIX + "AAAA",
        "other." + body,
        tokens.PREFIX + flipped,
        tokens.PREFIX + "A" * 3000,
        tokens.Sealer("z" * 40).seal(access),
        tokens.Sealer().seal(access),
    ):
        with pytest.raises(Unauthenticated):
            sealer.open(bad)


def test_a_short_token_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        tokens.Sealer("short")
    with pytest.raises(ValueError, match=r"e2b\.token_secret"):
        E2bSection(token_secret="short")
    assert tokens.Sealer().ephemeral and not tokens.Sealer("x" * 32).ephemeral


def test_metadata_become_prefixed_labels_and_back() -> None:
    labels = metadata_labels({"team": "data", "run.id": "7"})
    assert labels == {"e2b": "sandbox", "e2b.team": "data", "e2b.run.id": "7"}

    class Task:
        def __init__(self, labels: dict[str, str]) -> None:
            self.labels = labels

    assert metadata_of(Task(labels)) == {"team": "data", "run.id": "7"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "metadata",
    [{"bad key": "v"}, {"k" * 55: "v"}, {"k": "v" * 257}, {f"k{i}": "v" for i in range(33)}],
)
def test_metadata_out_of_bounds_is_invalid_argument_naming_the_field(
    metadata: dict[str, str],
) -> None:
    with pytest.raises(InvalidArgument, match="metadata"):
        metadata_labels(metadata)


def test_every_status_has_an_http_status_and_a_connect_code() -> None:
    assert set(TABLE) == set(grpc.StatusCode) - {grpc.StatusCode.OK}
    problem = problem_of(NotFound("sandbox 'x' not found"))
    assert problem == Problem(grpc.StatusCode.NOT_FOUND, "sandbox 'x' not found")
    assert problem.http_status == 404
    assert problem.connect_error().code == Code.NOT_FOUND
    assert problem_of(ValueError("a bug")) is None


def test_templates_and_timeouts_are_checked() -> None:
    boxes = Sandboxes(None, E2bSection(max_timeout_seconds=600), Keeper(None), tokens.Sealer())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="default_template"):
        boxes.profile_of("base")
    assert boxes.profile_of("py") == "py"
    named = Sandboxes(None, E2bSection(default_template="py"), Keeper(None), tokens.Sealer())  # type: ignore[arg-type]
    assert named.profile_of("base") == "py"
    assert boxes.timeout_of(None) == 300
    assert boxes.timeout_of(60) == 60
    for bad in (0, -1, 601, True, "60", 1.5):
        with pytest.raises(InvalidArgument, match="timeout"):
            boxes.timeout_of(bad)


def test_a_bug_reaches_envd_clients_as_internal_without_its_text() -> None:
    error = connect_error_of(KeyError("secret detail"))
    assert error.code == Code.INTERNAL and "secret" not in str(error)
    assert connect_error_of(Unauthenticated("X-Access-Token: required")).code == (
        Code.UNAUTHENTICATED
    )
