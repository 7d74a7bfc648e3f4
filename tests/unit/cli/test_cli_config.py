"""Where the CLI finds the gateway and its key: flag, then env, then cli.yaml."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from clients.cli.config import DEFAULT_ADDR, load_cli_config, write_config_file
from clients.cli.errors import CliError


def test_defaults_without_anything(tmp_path: Path) -> None:
    config = load_cli_config(environ={"LONGSHORE_HOME": str(tmp_path)})
    assert (config.addr, config.api_key, config.home) == (DEFAULT_ADDR, "", tmp_path)


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    write_config_file(tmp_path, addr="file:1", api_key="file-key")
    env = {"LONGSHORE_HOME": str(tmp_path)}
    assert load_cli_config(environ=env).addr == "file:1"
    assert load_cli_config(environ=env).api_key == "file-key"
    env |= {"LONGSHORE_GATEWAY_ADDR": "env:2", "LONGSHORE_API_KEY": "env-key"}
    assert (load_cli_config(environ=env).addr, load_cli_config(environ=env).api_key) == (
        "env:2",
        "env-key",
    )
    flagged = load_cli_config(addr="flag:3", api_key="flag-key", environ=env)
    assert (flagged.addr, flagged.api_key) == ("flag:3", "flag-key")


def test_config_file_is_private(tmp_path: Path) -> None:
    path = write_config_file(tmp_path / "home", addr="a:1", api_key="k")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_broken_config_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "cli.yaml").write_text("- just\n- a list\n")
    with pytest.raises(CliError, match="expected a mapping"):
        load_cli_config(environ={"LONGSHORE_HOME": str(tmp_path)})
