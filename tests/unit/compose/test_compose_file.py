"""compose.yaml keeps the rules of issues 7 and 10 and works with Compose v1 and v2.

Parsed as YAML (no Compose needed), and where Compose is installed through
``docker-compose config``/``docker compose config``: what the engine is asked
to publish, with the defaults and with the one setting that opens the gateway.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CORE = ("sandbox", "kanban", "gateway", "dashboard")
DOCKER_COMPOSE_V2 = ["docker", "compose"]
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


def test_only_gateway_and_dashboard_publish_and_both_on_loopback_by_default() -> None:
    services = compose()["services"]
    published = {name for name in services if services[name].get("ports")}
    assert published == {"gateway", "dashboard", "tracing", "e2b"}
    assert services["e2b"]["ports"] == ["${LONGSHORE_E2B_PUBLISH:-127.0.0.1:3000}:3000"]
    assert services["gateway"]["ports"] == ["${LONGSHORE_GATEWAY_PUBLISH:-127.0.0.1:50051}:50051"]
    assert services["dashboard"]["ports"] == ["${LONGSHORE_DASHBOARD_PUBLISH:-127.0.0.1:8080}:8080"]
    assert services["tracing"]["ports"] == ["127.0.0.1:${LONGSHORE_TRACING_UI_PORT:-16686}:16686"]
    # Every published port names a loopback host address (a bare port means 0.0.0.0).
    for name in published:
        for port in services[name]["ports"]:
            assert re.fullmatch(r"(\$\{[A-Z0-9_]+:-)?127\.0\.0\.1:.+", port), (name, port)


def test_env_example_publishes_on_loopback_and_names_the_setting_that_opens_it() -> None:
    example = (REPO / ".env.example").read_text()
    assert "LONGSHORE_GATEWAY_PUBLISH=127.0.0.1:50051" in example.splitlines()
    assert "LONGSHORE_DASHBOARD_PUBLISH=127.0.0.1:8080" in example.splitlines()
    assert "LONGSHORE_GATEWAY_PUBLISH=0.0.0.0:50051" in example  # documented, commented
    assert not re.search(r"(?m)^LONGSHORE_\w+_BIND=", example)


def compose_config(tmp_path: Path, extra: str = "") -> dict[str, Any]:
    """What Compose itself makes of compose.yaml with placeholder secrets (+ ``extra``)."""
    if shutil.which("docker-compose"):
        binary = ["docker-compose"]
    elif (
        subprocess.run([*DOCKER_COMPOSE_V2, "version"], capture_output=True, check=False).returncode
        == 0
    ):
        binary = DOCKER_COMPOSE_V2
    else:
        pytest.skip("no Compose installed: the YAML-level tests above still pin the defaults")
    env = tmp_path / "x.env"
    env.write_text("".join(f"{name}=placeholder\n" for name in SECRETS) + extra)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LONGSHORE_")}
    proc = subprocess.run(
        [
            *binary,
            "-f",
            str(REPO / "compose.yaml"),
            "--env-file",
            str(env),
            "-p",
            "lsunit",
            "config",
        ],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = yaml.safe_load(proc.stdout)
    return doc


def published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port, v1 or v2 syntax."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # Compose v2's long syntax
            out.append((port.get("host_ip", ""), str(port["published"]), str(port["target"])))
        else:
            host_ip, host_port, target = str(port).rsplit(":", 2)
            out.append((host_ip, host_port, target.removesuffix("/tcp")))
    return out


def test_compose_publishes_on_loopback_by_default(tmp_path: Path) -> None:
    services = compose_config(tmp_path)["services"]
    assert published(services["gateway"]) == [("127.0.0.1", "50051", "50051")]
    assert published(services["dashboard"]) == [("127.0.0.1", "8080", "8080")]
    assert all(not published(services[name]) for name in ("sandbox", "kanban"))


def test_one_setting_publishes_the_gateway_wider(tmp_path: Path) -> None:
    services = compose_config(tmp_path, "LONGSHORE_GATEWAY_PUBLISH=0.0.0.0:50051\n")["services"]
    assert published(services["gateway"]) == [("0.0.0.0", "50051", "50051")]
    assert published(services["dashboard"]) == [("127.0.0.1", "8080", "8080")]


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


def test_every_service_network_and_volume_is_labelled_as_a_component_and_restarts() -> None:
    """io.longshore.managed marks sandboxes only: nothing of the stack may carry it."""
    doc = compose()
    assert "io.longshore.managed" not in (REPO / "compose.yaml").read_text().replace(
        "# Labels: io.longshore.managed=1 marks a sandbox", ""
    )
    for name, svc in doc["services"].items():
        assert svc["labels"] == {"io.longshore.component": name}, name
        assert svc["restart"] == "unless-stopped", name
    for kind in ("networks", "volumes"):
        for name, item in doc[kind].items():
            assert set(item["labels"]) == {"io.longshore.component"}, f"{kind}.{name}"


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
    assert services["e2b"]["profiles"] == ["e2b"]
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


def test_the_sandbox_policy_reaches_the_sandbox_manager_and_defaults_to_empty() -> None:
    env = compose()["services"]["sandbox"]["environment"]
    for name in ("LONGSHORE_SANDBOX_ALLOWED_HOST_PATHS", "LONGSHORE_SANDBOX_ALLOWED_CAPABILITIES"):
        assert env[name] == f"${{{name}:-}}", name
    example = (REPO / ".env.example").read_text()
    assert "LONGSHORE_SANDBOX_ALLOWED_HOST_PATHS=\n" in example
