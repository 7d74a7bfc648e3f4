"""Suite-wide pytest wiring: markers by folder and the shared fixture modules.

Markers are applied from the folder a test lives in (``tests/unit`` → ``unit``,
``tests/integration`` → ``integration``, ``tests/e2e`` → ``e2e``), so
``pytest -m unit`` selects exactly the fast tests without every file having to
say so. Fixtures live in ``tests/support/`` and are registered here as plugins.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.docker_env",
    "tests.support.postgres",
    "tests.support.otlp",
]

_TESTS_ROOT = Path(__file__).resolve().parent
_FOLDER_MARKERS = {"unit": "unit", "integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every collected test after the top-level folder it lives in."""
    del config
    for item in items:
        try:
            relative = Path(str(item.path)).resolve().relative_to(_TESTS_ROOT)
        except ValueError:
            continue
        marker = _FOLDER_MARKERS.get(relative.parts[0]) if relative.parts else None
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))
