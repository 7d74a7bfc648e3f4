"""Where the CLI finds the gateway and which API key it presents.

Each value comes from, in order: the flag (``--addr``, ``--api-key``), the
environment (``LONGSHORE_GATEWAY_ADDR``, ``LONGSHORE_API_KEY``), then the file
``$LONGSHORE_HOME/cli.yaml`` (``addr:`` and ``api_key:``), which
``longshore up`` writes for the key it made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from clients.cli.errors import CliError

DEFAULT_ADDR = "127.0.0.1:50051"
CONFIG_NAME = "cli.yaml"


@dataclass(frozen=True)
class CliConfig:
    """The resolved connection settings."""

    addr: str
    api_key: str
    home: Path
    timeout: float


def longshore_home(environ: Mapping[str, str] | None = None) -> Path:
    """Return ``$LONGSHORE_HOME`` (default ``~/.longshore``)."""
    env = os.environ if environ is None else environ
    return Path(env.get("LONGSHORE_HOME") or "~/.longshore").expanduser()


def read_config_file(home: Path) -> dict[str, str]:
    """Read ``cli.yaml`` under ``home``; an absent file is empty.

    Raises:
        CliError: The file exists but is not a YAML mapping.
    """
    path = home / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(data, dict):
        raise CliError(f"{path}: expected a mapping with addr and api_key")
    return {str(k): str(v) for k, v in data.items() if v is not None}


def load_cli_config(
    *,
    addr: str | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
    environ: Mapping[str, str] | None = None,
) -> CliConfig:
    """Resolve the gateway address and API key (flag, then env, then cli.yaml)."""
    env = os.environ if environ is None else environ
    home = longshore_home(env)
    file_values = read_config_file(home)
    return CliConfig(
        addr=addr or env.get("LONGSHORE_GATEWAY_ADDR") or file_values.get("addr") or DEFAULT_ADDR,
        api_key=api_key or env.get("LONGSHORE_API_KEY") or file_values.get("api_key") or "",
        home=home,
        timeout=timeout,
    )


def write_config_file(home: Path, *, addr: str, api_key: str) -> Path:
    """Write ``cli.yaml`` (owner-only permissions: it holds a key)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / CONFIG_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yaml.safe_dump({"addr": addr, "api_key": api_key}, handle)
    path.chmod(0o600)
    return path
