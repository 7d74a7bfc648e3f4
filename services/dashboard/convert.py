"""Protobuf messages to the JSON the pages read.

Field names stay as in the protos (snake_case); enum values lose their type
prefix and are lower-cased (``TASK_STATUS_READY`` -> ``ready``); timestamps
are RFC 3339 strings; bytes never appear (output is decoded by the views).

Env values never leave :func:`to_json`: the gateway already answers
``<redacted>``, and every ``env`` map or ``NAME=value`` list anywhere in a
message is redacted again here, so a backend that forgot would still not
reach a browser.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

ENUM_PREFIXES = (
    "TASK_STATUS_",
    "READINESS_REASON_",
    "RUN_STATUS_",
    "SANDBOX_STATE_",
    "BACKEND_HEALTH_",
    "EXECUTOR_",
    "REUSE_OUTCOME_",
    "NETWORK_MODE_",
    "LEASE_EXPIRY_",
)

#: Board columns in order; ``archived`` is hidden from the board.
COLUMNS = ("triage", "todo", "ready", "running", "blocked", "done")

#: Allowed moves by hand (the proto's transition table minus ``running``,
#: which only the dispatcher or a worker claim may enter).
MOVES: dict[str, tuple[str, ...]] = {
    "triage": ("todo", "ready", "archived"),
    "todo": ("ready", "blocked", "archived", "triage"),
    "ready": ("todo", "blocked", "archived"),
    "running": ("ready", "done", "blocked", "archived"),
    "blocked": ("ready", "todo", "archived"),
    "done": ("archived", "ready"),
    "archived": (),
}


def _short(value: str) -> str:
    for prefix in ENUM_PREFIXES:
        if value.startswith(prefix):
            return value.removeprefix(prefix).lower()
    return value


#: Keys whose values are enums in the protos the dashboard reads; only these
#: are shortened (a title that happens to start with a prefix stays intact).
ENUM_KEYS = frozenset(
    {"status", "reason", "state", "health", "executor", "outcome", "network", "lease_expiry"}
)


def _shorten(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            key: _short(value) if key in ENUM_KEYS and isinstance(value, str) else _shorten(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [_shorten(value) for value in data]
    return data


#: What an env value reads as, everywhere (the gateway's own placeholder).
REDACTED = "<redacted>"

#: Keys whose values carry environment variables.
ENV_KEYS = frozenset({"env"})


def redact_env(data: Any) -> Any:
    """Replace every env value under an ``env`` key, at any depth, by :data:`REDACTED`."""
    if isinstance(data, dict):
        result: dict[str, Any] = {}
        for key, value in data.items():
            if key in ENV_KEYS and isinstance(value, dict):
                result[key] = dict.fromkeys(value, REDACTED)
            elif key in ENV_KEYS and isinstance(value, list):
                result[key] = [
                    f"{str(item).split('=', 1)[0]}={REDACTED}" if "=" in str(item) else item
                    for item in value
                ]
            else:
                result[key] = redact_env(value)
        return result
    if isinstance(data, list):
        return [redact_env(value) for value in data]
    return data


def to_json(message: Message) -> dict[str, Any]:
    """Convert any message: proto field names, defaults included, short enums, no env values."""
    data = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    result: dict[str, Any] = redact_env(_shorten(data))
    return result


def task_json(task: Message) -> dict[str, Any]:
    """A task, without its env values (secrets never reach the browser)."""
    data = to_json(task)
    data["env"] = sorted(data.get("env", {}))
    data["moves"] = list(MOVES.get(data.get("status", ""), ()))
    return data


def status_enum(name: str, prefix: str) -> str:
    """``ready`` -> ``TASK_STATUS_READY`` (for requests built from JSON)."""
    return prefix + name.strip().upper()
