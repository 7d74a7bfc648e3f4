"""The sandbox settings follow the one naming rule."""

from __future__ import annotations

from services.runtime.config import load_settings
from services.sandbox.settings import DEFAULT_CAPABILITIES, SandboxSettings


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
