"""Typed settings: one frozen dataclass model per service, loaded by one rule.

A top-level field ``foo`` is the variable ``LONGSHORE_FOO``; a field whose type
is itself a dataclass is a *section*, and its field ``section.key`` is
``LONGSHORE_SECTION_KEY``. The same names work in the optional YAML file
(``{section: {key: value}}``), named by ``LONGSHORE_CONFIG`` or found at
``$LONGSHORE_HOME/config.yaml``; environment variables win over the file.
Adding a setting is one line in a model; there is no bridging table.

Values are parsed once at start; a bad one raises :class:`SettingsError`
naming the variable (or the file key), so a service fails fast.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

PREFIX = "LONGSHORE_"
CONFIG_FILE_VAR = "LONGSHORE_CONFIG"

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class SettingsError(ValueError):
    """A setting is missing, malformed or unknown; the message names it."""


@dataclass(frozen=True)
class PeerSection:
    """Where a service finds one of its peers."""

    addr: str = field(default="", metadata={"help": "host:port of the peer's gRPC server."})


@dataclass(frozen=True)
class BaseSettings:
    """Settings every service shares (top-level ``LONGSHORE_*`` variables)."""

    home: Path = field(
        default=Path("~/.longshore"),
        metadata={"help": "State directory: the SQLite database, logs, config.yaml."},
    )
    deployment: str = field(
        default="default",
        metadata={"help": "Deployment name; sandboxes carry it as io.longshore.deployment."},
    )
    internal_token: str = field(
        default="",
        metadata={
            "help": "Credential between services; backends refuse calls without it.",
            "secret": True,
        },
    )
    log_level: str = field(default="INFO", metadata={"help": "Log level (DEBUG, INFO, ...)."})
    shutdown_delay_seconds: float = field(
        default=0.5,
        metadata={
            "help": "After SIGTERM, how long health reports NOT_SERVING before the server "
            "stops accepting calls (lets load balancers notice)."
        },
    )
    shutdown_timeout_seconds: float = field(
        default=45.0,
        metadata={
            "help": "After SIGTERM, the longest the drain and the closing may take; past it "
            "every thread's stack is written to stderr and the process exits 1 (what it did "
            "not close, the next start's sweep and the reaper find). 0 disables the bound."
        },
    )
    otel_endpoint: str = field(
        default="",
        metadata={
            "help": "OTLP/gRPC endpoint for traces and metrics; empty disables export.",
            "env": "OTEL_EXPORTER_OTLP_ENDPOINT",
        },
    )
    metrics_listen: str = field(
        default="",
        metadata={
            "help": "host:port of the Prometheus text endpoint (GET /metrics); empty disables "
            "it. Metrics also go over OTLP to otel_endpoint when that is set."
        },
    )

    def __post_init__(self) -> None:
        # Frozen, so expand `~` through object.__setattr__ once at construction.
        object.__setattr__(self, "home", Path(self.home).expanduser())
        bound = self.shutdown_timeout_seconds
        if not (math.isfinite(bound) and 0 <= bound <= 86_400):
            raise ValueError(f"shutdown_timeout_seconds: must be between 0 and 86400, got {bound}")


@dataclass(frozen=True)
class SettingDoc:
    """One setting as documentation sees it."""

    key: str
    env: str
    type: str
    default: str
    help: str


def env_name(key: str, f: dataclasses.Field[Any] | None = None) -> str:
    """Returns the environment variable for a dotted setting key."""
    if f is not None and "env" in f.metadata:
        return str(f.metadata["env"])
    return PREFIX + key.replace(".", "_").upper()


def load_settings(
    model: type[T],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> T:
    """Builds ``model`` from defaults, the YAML file and the environment.

    Args:
        model: A frozen dataclass (usually a subclass of :class:`BaseSettings`).
        environ: Variables to read; defaults to ``os.environ``.
        config_file: YAML file to read; defaults to ``$LONGSHORE_CONFIG`` or
            ``$LONGSHORE_HOME/config.yaml`` when that exists.

    Returns:
        The settings instance.

    Raises:
        SettingsError: A value does not parse, or the file has an unknown key.
    """
    env = dict(os.environ if environ is None else environ)
    file_values = _read_file(config_file, env)
    _reject_unknown(model, file_values, "")
    return typing.cast(T, _build(model, "", file_values, env))


def describe_settings(model: type[Any]) -> list[SettingDoc]:
    """Lists every setting of ``model`` with its variable, type, default and help."""
    return list(_describe(model, ""))


def _describe(model: type[Any], prefix: str, base: Any = None) -> Iterator[SettingDoc]:
    hints = typing.get_type_hints(model)
    for f in dataclasses.fields(model):
        key = prefix + f.name
        tp = hints[f.name]
        if _is_section(tp):
            yield from _describe(tp, key + ".", _default_of(f))
            continue
        default = getattr(base, f.name) if base is not None else _default_of(f)
        shown = "" if f.metadata.get("secret") else str(default)
        yield SettingDoc(key, env_name(key, f), _type_name(tp), shown, f.metadata.get("help", ""))


def _read_file(config_file: Path | None, env: Mapping[str, str]) -> dict[str, Any]:
    path = config_file
    if path is None and env.get(CONFIG_FILE_VAR):
        path = Path(env[CONFIG_FILE_VAR]).expanduser()
        if not path.is_file():
            raise SettingsError(f"{CONFIG_FILE_VAR}: no such file {str(path)!r}")
    if path is None:
        home = Path(env.get(PREFIX + "HOME", "~/.longshore")).expanduser()
        candidate = home / "config.yaml"
        path = candidate if candidate.is_file() else None
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: cannot read settings file: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    return data


def _reject_unknown(model: type[Any], values: Mapping[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(model)
    names = {f.name for f in dataclasses.fields(model)}
    for key, value in values.items():
        dotted = prefix + str(key)
        if key not in names:
            raise SettingsError(f"config file: unknown setting {dotted!r}")
        tp = hints[key]
        if _is_section(tp):
            if not isinstance(value, dict):
                raise SettingsError(f"config file: {dotted!r} must be a mapping")
            _reject_unknown(tp, value, dotted + ".")


def _build(
    model: type[Any],
    prefix: str,
    file_values: Mapping[str, Any],
    env: Mapping[str, str],
    base: Any = None,
) -> Any:
    """Builds ``model``; ``base`` is the parent field's default section, if any."""
    hints = typing.get_type_hints(model)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(model):
        key = prefix + f.name
        tp = hints[f.name]
        if _is_section(tp):
            section_default = _default_of(f)
            kwargs[f.name] = _build(
                tp,
                key + ".",
                file_values.get(f.name) or {},
                env,
                section_default if dataclasses.is_dataclass(section_default) else None,
            )
            continue
        var = env_name(key, f)
        if var in env:
            kwargs[f.name] = _parse(env[var], tp, var)
        elif f.name in file_values:
            kwargs[f.name] = _coerce(file_values[f.name], tp, f"config file {key!r}")
    try:
        if base is not None:
            return dataclasses.replace(base, **kwargs)
        return model(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{prefix.rstrip('.') or 'settings'}: {exc}") from exc


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ""


def _optional_inner(tp: Any) -> Any | None:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def _type_name(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{_type_name(inner)} | None"
    if typing.get_origin(tp) is tuple:
        return "list of str"
    return getattr(tp, "__name__", str(tp))


def _parse(raw: str, tp: Any, where: str) -> Any:
    """Parses an environment string into ``tp``."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if raw.strip() == "" else _parse(raw, inner, where)
    if typing.get_origin(tp) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return _coerce(raw, tp, where)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Converts a YAML or environment value into ``tp``, naming ``where`` on failure."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else _coerce(value, inner, where)
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str):
            return _parse(value, tp, where)
        if not isinstance(value, list):
            raise SettingsError(f"{where}: expected a list, got {value!r}")
        return tuple(str(v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SettingsError(f"{where}: expected a boolean (1/0, true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise SettingsError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise SettingsError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(str(value).strip())
        except ValueError:
            raise SettingsError(f"{where}: expected a number, got {value!r}") from None
    if tp is Path:
        return Path(str(value)).expanduser()
    if tp is str:
        if isinstance(value, dict | list):
            raise SettingsError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise SettingsError(f"{where}: unsupported setting type {tp!r}")
