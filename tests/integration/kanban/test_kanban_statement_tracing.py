"""``database.trace_statements``: SQL statement spans only when the operator asks for them.

The end-to-end trace test (``tests/e2e/test_traced_task.py``) shows the
spans themselves under a real collector; this shows the default leaves the
engine uninstrumented.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

from services.kanban.service import build_app
from services.kanban.settings import DatabaseSection, KanbanSection, KanbanSettings


def _tracers(engine: Any) -> list[Any]:
    return [
        listener
        for listener in engine.dispatch.before_cursor_execute
        if isinstance(getattr(listener, "__self__", None), EngineTracer)
    ]


@pytest.mark.parametrize("trace", [False, True])
def test_statement_spans_follow_the_setting(tmp_path: Path, trace: bool) -> None:
    settings = KanbanSettings(
        home=tmp_path,
        kanban=replace(KanbanSection(), dispatcher_enabled=False),
        database=DatabaseSection(url=f"sqlite:///{tmp_path / 'k.db'}", trace_statements=trace),
    )
    app = build_app(settings, executor=None)  # instrument=True, as the service builds it
    try:
        assert bool(_tracers(app.db.engine)) is trace
    finally:
        app.close()
        if trace:
            SQLAlchemyInstrumentor().uninstrument()


def test_the_default_is_off() -> None:
    assert DatabaseSection().trace_statements is False
