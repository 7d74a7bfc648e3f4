"""The sandbox settings follow the one naming rule."""

from __future__ import annotations

import pytest

from services.runtime.config import load_settings
from services.sandbox.settings import (
    DEFAULT_CAPABILITIES,
    MAX_SPARES,
    SandboxSection,
    SandboxSettings,
)


def test_defaults_and_env_names(tmp_path: object) -> None:
    settings = load_settings(SandboxSettings, environ={"LONGSHORE_HOME": str(tmp_path)})
    assert settings.sandbox.listen == "127.0.0.1:50053"
    assert settings.sandbox.lifetime_seconds == 300 and settings.sandbox.idle_stop_seconds == 0
    assert settings.sandbox.cleanup_drain_seconds == 15
    assert settings.sandbox.capabilities == DEFAULT_CAPABILITIES
    env = {
        "LONGSHORE_HOME": str(tmp_path),
        "LONGSHORE_DEPLOYMENT": "blue",
        "LONGSHORE_SANDBOX_LIFETIME_SECONDS": "120",
        "LONGSHORE_SANDBOX_REAPER_ENABLED": "false",
        "LONGSHORE_SANDBOX_CAPABILITIES": "CHOWN,KILL",
    }
    settings = load_settings(SandboxSettings, environ=env)
    assert settings.deployment == "blue" and settings.sandbox.lifetime_seconds == 120
    assert settings.sandbox.reaper_enabled is False
    assert settings.sandbox.capabilities == ("CHOWN", "KILL")


def test_spares_default_to_one_a_sandbox_and_are_bounded() -> None:
    section = SandboxSection()
    assert (section.spare_processes_per_sandbox, section.max_spare_processes) == (1, 64)
    assert SandboxSection(spare_processes_per_sandbox=0).spare_processes_per_sandbox == 0
    for bad in (-1, MAX_SPARES + 1):
        with pytest.raises(ValueError, match="spare_processes_per_sandbox"):
            SandboxSection(spare_processes_per_sandbox=bad)
        with pytest.raises(ValueError, match="max_spare_processes"):
            SandboxSection(max_spare_processes=bad)
