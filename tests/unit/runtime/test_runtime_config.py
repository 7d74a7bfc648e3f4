"""The settings rule: section.key <-> LONGSHORE_SECTION_KEY, YAML or env, fail fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.runtime.config import (
    BaseSettings,
    PeerSection,
    SettingsError,
    describe_settings,
    load_settings,
)


@dataclass(frozen=True)
class DemoSection:
    listen: str = field(default="127.0.0.1:50099", metadata={"help": "bind address"})
    lifetime_seconds: int = field(default=300, metadata={"help": "lifetime"})
    ratio: float = 0.5
    enabled: bool = True
    tags: tuple[str, ...] = ()
    cap: int | None = None


@dataclass(frozen=True)
class DemoSettings(BaseSettings):
    demo: DemoSection = field(default_factory=DemoSection)
    peer: PeerSection = field(default_factory=lambda: PeerSection("127.0.0.1:1"))


def test_defaults_apply_without_env_or_file(tmp_path: Path) -> None:
    s = load_settings(DemoSettings, environ={"LONGSHORE_HOME": str(tmp_path)})
    assert s.demo.lifetime_seconds == 300
    assert s.deployment == "default"
    assert s.home == tmp_path
    assert s.peer.addr == "127.0.0.1:1"


def test_env_names_follow_the_rule(tmp_path: Path) -> None:
    env = {
        "LONGSHORE_HOME": str(tmp_path),
        "LONGSHORE_DEMO_LIFETIME_SECONDS": "42",
        "LONGSHORE_DEMO_RATIO": "1.5",
        "LONGSHORE_DEMO_ENABLED": "false",
        "LONGSHORE_DEMO_TAGS": "a, b,,c",
        "LONGSHORE_DEMO_CAP": "",
        "LONGSHORE_PEER_ADDR": "kanban:50052",
        "LONGSHORE_DEPLOYMENT": "blue",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
    }
    s = load_settings(DemoSettings, environ=env)
    assert s.demo.lifetime_seconds == 42
    assert s.demo.ratio == 1.5
    assert s.demo.enabled is False
    assert s.demo.tags == ("a", "b", "c")
    assert s.demo.cap is None
    assert s.peer.addr == "kanban:50052"
    assert s.deployment == "blue"
    assert s.otel_endpoint == "http://collector:4317"


def test_yaml_file_is_read_and_env_wins(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("deployment: green\ndemo:\n  lifetime_seconds: 7\n  tags: [x, y]\n")
    env = {"LONGSHORE_HOME": str(tmp_path), "LONGSHORE_DEMO_LIFETIME_SECONDS": "9"}
    s = load_settings(DemoSettings, environ=env)
    assert s.deployment == "green"
    assert s.demo.lifetime_seconds == 9
    assert s.demo.tags == ("x", "y")


def test_explicit_config_variable_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="LONGSHORE_CONFIG"):
        load_settings(DemoSettings, environ={"LONGSHORE_CONFIG": str(tmp_path / "nope.yaml")})


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("LONGSHORE_DEMO_LIFETIME_SECONDS", "abc", "expected an integer"),
        ("LONGSHORE_DEMO_RATIO", "fast", "expected a number"),
        ("LONGSHORE_DEMO_ENABLED", "maybe", "expected a boolean"),
    ],
)
def test_bad_values_fail_naming_the_variable(
    tmp_path: Path, var: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(DemoSettings, environ={"LONGSHORE_HOME": str(tmp_path), var: value})
    assert var in str(info.value)
    assert expected in str(info.value)


def test_unknown_yaml_key_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("demo:\n  lifetme_seconds: 3\n")
    with pytest.raises(SettingsError, match=r"demo\.lifetme_seconds"):
        load_settings(DemoSettings, environ={"LONGSHORE_HOME": str(tmp_path)})


def test_bad_yaml_value_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("demo:\n  lifetime_seconds: soon\n")
    with pytest.raises(SettingsError, match=r"demo\.lifetime_seconds"):
        load_settings(DemoSettings, environ={"LONGSHORE_HOME": str(tmp_path)})


def test_describe_lists_every_setting_and_hides_secrets() -> None:
    docs = {d.env: d for d in describe_settings(DemoSettings)}
    assert docs["LONGSHORE_DEMO_LISTEN"].key == "demo.listen"
    assert docs["LONGSHORE_DEMO_LISTEN"].help == "bind address"
    assert docs["LONGSHORE_PEER_ADDR"].type == "str"
    assert docs["LONGSHORE_DEMO_CAP"].type == "int | None"
    assert docs["LONGSHORE_INTERNAL_TOKEN"].default == ""
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in docs
