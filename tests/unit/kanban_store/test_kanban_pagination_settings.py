"""Page tokens, page sizes and the lenient dispatcher settings."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging

import pytest

from services.kanban import pagination
from services.kanban.db import normalize_url
from services.kanban.settings import DispatchLimits, KanbanSection, KanbanSettings
from services.runtime.config import load_settings
from services.runtime.errors import InvalidArgument


def test_page_size_defaults_caps_and_refuses_negative() -> None:
    assert pagination.page_size(0) == 100
    assert pagination.page_size(5000) == 1000
    with pytest.raises(InvalidArgument, match="page_size"):
        pagination.page_size(-1)


def test_tokens_round_trip_and_are_bound_to_their_filters() -> None:
    kinds = (pagination.INT, pagination.TIME, pagination.STR)
    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    token = pagination.encode_token("tasks", ["b", [], ""], [3, when, "t-1"])
    assert pagination.decode_token(token, "tasks", ["b", [], ""], kinds) == (3, when, "t-1")
    assert pagination.decode_token("", "tasks", None, kinds) is None
    with pytest.raises(InvalidArgument, match="different request"):
        pagination.decode_token(token, "tasks", ["other", [], ""], kinds)
    with pytest.raises(InvalidArgument, match="malformed"):
        pagination.decode_token("%%%", "tasks", None, kinds)


def _forged(key: object) -> str:
    body = json.dumps({"f": pagination._fingerprint("tasks", None), "k": key})
    return base64.urlsafe_b64encode(body.encode()).decode()


@pytest.mark.parametrize(
    "key",
    [
        [],
        [1, "2024-01-01T00:00:00+00:00"],
        ["x", "2024-01-01T00:00:00+00:00", "t"],
        [2**70, "2024-01-01T00:00:00+00:00", "t"],
        [True, "2024-01-01T00:00:00+00:00", "t"],
        [1, "not a time", "t"],
        [1, "2024-01-01T00:00:00", "t"],
        [1, "2024-01-01T00:00:00+00:00", "nul\x00"],
        [1, "2024-01-01T00:00:00+00:00", "t" * 5000],
        [1, "2024-01-01T00:00:00+00:00", {"deep": [[[]]]}],
        {"k": 1},
    ],
)
def test_forged_tokens_are_invalid_argument(key: object) -> None:
    kinds = (pagination.INT, pagination.TIME, pagination.STR)
    with pytest.raises(InvalidArgument, match="page_token"):
        pagination.decode_token(_forged(key), "tasks", None, kinds)


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "2.5"])
def test_invalid_caps_mean_no_cap_with_a_warning(
    raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        limits = DispatchLimits.from_section(
            KanbanSection(max_in_progress=raw, max_in_progress_per_profile=raw, max_spawn=raw)
        )
    assert limits.planner.max_in_progress is None
    assert limits.planner.max_in_progress_per_profile is None
    assert limits.max_spawn is None


def test_settings_load_from_the_environment_by_the_one_rule() -> None:
    settings = load_settings(
        KanbanSettings,
        environ={
            "LONGSHORE_DATABASE_URL": "postgresql://u@h/db",
            "LONGSHORE_KANBAN_MAX_IN_PROGRESS_PER_PROFILE": "3",
            "LONGSHORE_KANBAN_DEFAULT_ASSIGNEE": "  ",
            "LONGSHORE_SANDBOX_ADDR": "sandbox:50053",
        },
        config_file=None,
    )
    assert settings.database.url == "postgresql://u@h/db"
    assert normalize_url(settings.database.url) == "postgresql+psycopg://u@h/db"
    assert settings.sandbox.addr == "sandbox:50053"
    assert settings.kanban.listen == "127.0.0.1:50052"
    limits = DispatchLimits.from_section(settings.kanban)
    assert limits.planner.max_in_progress_per_profile == 3
    assert limits.planner.default_assignee is None
    assert limits.planner.failure_limit == 2
