"""`docker compose up --scale kanban=3` (profile `postgres`): what compose.yaml must allow.

A replica set needs a service with nothing fixed per container (no container
name, host name or published port: compose would refuse the second
replica), and a gateway that dials every replica: it is given the service
*name*, which the gateway turns into a ``dns:///`` target balanced round
robin over every address compose's DNS returns (one per replica). The manual
check that the running stack does so is in docs/operations.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from services.gateway.forwarding import channel_target

REPO = Path(__file__).resolve().parents[3]


def services() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return dict(doc["services"])


def test_kanban_has_nothing_fixed_per_container() -> None:
    kanban = services()["kanban"]
    for key in ("container_name", "hostname", "ports", "mac_address"):
        assert key not in kanban, key
    assert "deploy" not in kanban  # a fixed `replicas:` would fight --scale


def test_every_peer_dials_kanban_by_its_service_name() -> None:
    for name, svc in services().items():
        env = svc.get("environment") or {}
        if "LONGSHORE_KANBAN_ADDR" in env:
            assert env["LONGSHORE_KANBAN_ADDR"] == "kanban:50052", name


def test_the_gateway_resolves_that_name_to_every_replica() -> None:
    gateway = services()["gateway"]["environment"]
    # A bare host:port becomes a DNS target (every A record a subchannel), not
    # the pick-first of a plain address; a listed IP set would not follow --scale.
    assert channel_target(gateway["LONGSHORE_KANBAN_ADDR"]) == "dns:///kanban:50052"


def test_the_replicas_share_one_database_setting() -> None:
    """One URL for all replicas: on PostgreSQL they share the board; on SQLite, do not scale."""
    env = services()["kanban"]["environment"]
    assert env["LONGSHORE_DATABASE_URL"] == "${LONGSHORE_DATABASE_URL:-}"
    text = (REPO / "docs" / "operations.md").read_text()
    assert "--scale kanban=3" in text
    assert "SQLite replicas" in text  # the unsupported case is said, not left to be found
