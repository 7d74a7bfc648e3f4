"""docs/configuration.md is generated from the settings models and must be current."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from services.runtime.config import describe_settings

REPO = Path(__file__).resolve().parents[3]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", REPO / "scripts" / "gen-config-docs.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_is_current() -> None:
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == generator().render(), (
        "docs/configuration.md is stale: run .venv/bin/python scripts/gen-config-docs.py"
    )


@pytest.mark.parametrize("service", ["sandbox", "kanban", "gateway", "dashboard"])
def test_every_setting_is_documented(service: str) -> None:
    model = generator().settings_model(service)
    missing = [s.env for s in describe_settings(model) if not s.help.strip()]
    assert missing == [], f"settings without metadata['help']: {missing}"
    assert f"## {service}\n" in (REPO / "docs" / "configuration.md").read_text()


def test_secret_defaults_are_never_printed() -> None:
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = [line for line in page.splitlines() if line.startswith("| `LONGSHORE_")]
    for name in ("LONGSHORE_INTERNAL_TOKEN", "LONGSHORE_GATEWAY_API_KEYS"):
        mine = [row for row in rows if row.startswith(f"| `{name}` | `")]
        assert mine and all("*secret*" in row for row in mine), name
