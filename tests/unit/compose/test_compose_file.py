"""compose.yaml keeps the rules of issue 7 and works with Compose v1 and v2.

Parsed as YAML (no Compose needed); `docker-compose config` itself is run by
tests/e2e/test_compose_stack.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CORE = ("sandbox", "kanban", "gateway", "dashboard")
SECRETS = (
    "LONGSHORE_INTERNAL_TOKEN",
    "LONGSHORE_GATEWAY_API_KEYS",
    "LONGSHORE_DASHBOARD_API_KEY",
    "LONGSHORE_DASHBOARD_SESSION_SECRET",
)


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return doc


def walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (dotted path, value) in the document."""
    out = [(path, node)]
    if isinstance(node, dict):
        for key, value in node.items():
            out += walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += walk(value, f"{path}[{index}]")
    return out


def test_nothing_compose_v1_rejects_and_no_fixed_container_names() -> None:
    doc = compose()
    assert "name" not in doc and "version" not in doc
    keys = [path.rsplit(".", 1)[-1] for path, _ in walk(doc)]
    assert "start_interval" not in keys and "container_name" not in keys


def test_only_gateway_and_dashboard_publish_and_the_dashboard_on_loopback() -> None:
    services = compose()["services"]
    published = {name for name in CORE if services[name].get("ports")}
    assert published == {"gateway", "dashboard"}
    (dashboard,) = services["dashboard"]["ports"]
    assert dashboard.startswith("${LONGSHORE_DASHBOARD_BIND:-127.0.0.1}:") and dashboard.endswith(
        ":8080"
    )
    (gateway,) = services["gateway"]["ports"]
    assert gateway.endswith(":50051")


def test_only_the_sandbox_manager_gets_the_engine_socket() -> None:
    services = compose()["services"]
    with_socket = {
        name
        for name, svc in services.items()
        if any("docker.sock" in str(v) for v in svc.get("volumes", []))
    }
    assert with_socket == {"sandbox"}
    assert services["sandbox"]["group_add"] == ["${DOCKER_GID:-0}"]


def test_start_order_waits_on_health() -> None:
    services = compose()["services"]
    expected = {"kanban": {"sandbox"}, "gateway": {"kanban", "sandbox"}, "dashboard": {"gateway"}}
    for name, needs in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == needs
        assert {d["condition"] for d in depends.values()} == {"service_healthy"}


def test_every_service_network_and_volume_is_labelled_and_restarts() -> None:
    doc = compose()
    for name, svc in doc["services"].items():
        assert svc["labels"]["io.longshore.managed"] == "1", name
        assert svc["restart"] == "unless-stopped", name
    for kind in ("networks", "volumes"):
        for name, item in doc[kind].items():
            assert item["labels"]["io.longshore.managed"] == "1", f"{kind}.{name}"


def test_kanban_keeps_data_and_logs_on_a_named_volume() -> None:
    doc = compose()
    assert "kanban-data:/var/lib/longshore" in doc["services"]["kanban"]["volumes"]
    assert "kanban-data" in doc["volumes"]


def test_secrets_come_from_the_env_file_and_are_required() -> None:
    text = (REPO / "compose.yaml").read_text()
    for name in SECRETS:
        assert re.search(rf"\$\{{{name}:\?", text), f"{name} must be ${{{name}:?...}}"
    assert not re.search(r"lsk_[A-Za-z0-9_-]{20,}", text)


def test_optional_profiles_take_their_images_from_settings() -> None:
    services = compose()["services"]
    assert services["postgres"]["profiles"] == ["postgres"]
    assert services["postgres"]["image"].startswith("${LONGSHORE_POSTGRES_IMAGE:-")
    assert services["tracing"]["profiles"] == ["tracing"]
    assert services["tracing"]["image"].startswith("${LONGSHORE_TRACING_IMAGE:-")
    assert all("profiles" not in services[name] for name in CORE)


def test_every_variable_is_listed_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (REPO / "compose.yaml").read_text()))
    example = (REPO / ".env.example").read_text()
    listed = set(re.findall(r"(?m)^#? ?([A-Z0-9_]+)=", example))
    # Tuning knobs passed through with their defaults; documented in docs/configuration.md.
    passthrough = {
        "LONGSHORE_SANDBOX_LIFETIME_SECONDS",
        "LONGSHORE_SANDBOX_DEFAULT_IMAGE",
        "LONGSHORE_KANBAN_DEFAULT_ASSIGNEE",
        "LONGSHORE_KANBAN_DISPATCH_INTERVAL_SECONDS",
        "LONGSHORE_DASHBOARD_INSECURE",
        "LONGSHORE_TRACING_UI_PORT",
    }
    assert used - passthrough <= listed, sorted(used - passthrough - listed)


def test_env_example_holds_no_secret_values() -> None:
    for line in (REPO / ".env.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if (
            sep
            and not line.startswith("#")
            and (key in SECRETS or key in ("LONGSHORE_API_KEY", "LONGSHORE_POSTGRES_PASSWORD"))
        ):
            assert value == "", f"{key} must be empty in .env.example"
