"""The real Longshore stack as processes: sandbox, kanban and gateway.

Each service is a ``python -m services.<name>`` subprocess on a free port,
sharing a fresh internal token; the gateway knows three API keys (admin,
reader, worker). Used by the gateway, CLI and end-to-end tests.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from longshore.gateway.v1 import gateway_service_pb2_grpc
from longshore.kanban.v1 import kanban_service_pb2_grpc, worker_service_pb2_grpc
from longshore.sandbox.v1 import sandbox_service_pb2_grpc

from services.gateway.auth import key_entry, new_key
from tests.support.net import free_port
from tests.support.processes import ServiceProcess


@dataclass
class Keys:
    """The API keys the stack's gateway accepts (plain text, for clients)."""

    admin: str = field(default_factory=new_key)
    reader: str = field(default_factory=new_key)
    worker: str = field(default_factory=new_key)

    def entries(self) -> str:
        return ",".join(
            [
                key_entry("ops", ["read", "write", "worker", "admin"], self.admin),
                key_entry("viewer", ["read"], self.reader),
                key_entry("bot", ["worker"], self.worker),
            ]
        )


@dataclass
class RealStack:
    """Addresses, credentials and processes of a running stack."""

    home: Path
    token: str
    keys: Keys
    sandbox_addr: str
    kanban_addr: str
    gateway_addr: str
    processes: dict[str, ServiceProcess]

    def channel(self) -> grpc.Channel:
        """A plain channel to the gateway (add ``auth(key)`` metadata per call)."""
        return grpc.insecure_channel(self.gateway_addr)

    def logs(self) -> str:
        """Every service's log, for failure messages."""
        return "\n".join(f"== {n}\n{p.log_tail(60)}" for n, p in self.processes.items())


def auth(key: str) -> tuple[tuple[str, str], ...]:
    """Metadata presenting ``key``."""
    return (("authorization", f"Bearer {key}"),)


@dataclass
class Stubs:
    """Generated stubs on one channel."""

    channel: grpc.Channel
    kanban: kanban_service_pb2_grpc.KanbanServiceStub = field(init=False)
    worker: worker_service_pb2_grpc.WorkerServiceStub = field(init=False)
    sandbox: sandbox_service_pb2_grpc.SandboxServiceStub = field(init=False)
    gateway: gateway_service_pb2_grpc.GatewayServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.kanban = kanban_service_pb2_grpc.KanbanServiceStub(self.channel)
        self.worker = worker_service_pb2_grpc.WorkerServiceStub(self.channel)
        self.sandbox = sandbox_service_pb2_grpc.SandboxServiceStub(self.channel)
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)


@contextmanager
def real_stack(
    home: Path,
    *,
    deployment: str,
    image: str,
    otel_endpoint: str = "",
    gateway_env: dict[str, str] | None = None,
    kanban_env: dict[str, str] | None = None,
    sandbox_env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Iterator[RealStack]:
    """Start sandbox and kanban (in parallel), then the gateway; stop all on exit."""
    token = secrets.token_urlsafe(24)
    keys = Keys()
    ports = {name: f"127.0.0.1:{free_port()}" for name in ("sandbox", "kanban", "gateway")}
    common = {
        "LONGSHORE_HOME": str(home),
        "LONGSHORE_DEPLOYMENT": deployment,
        "LONGSHORE_INTERNAL_TOKEN": token,
        "LONGSHORE_SHUTDOWN_DELAY_SECONDS": "0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otel_endpoint,
        "LONGSHORE_SANDBOX_ADDR": ports["sandbox"],
        "LONGSHORE_KANBAN_ADDR": ports["kanban"],
    }
    envs = {
        "sandbox": {
            **common,
            "LONGSHORE_SANDBOX_LISTEN": ports["sandbox"],
            "LONGSHORE_SANDBOX_DEFAULT_IMAGE": image,
            **(sandbox_env or {}),
        },
        "kanban": {**common, "LONGSHORE_KANBAN_LISTEN": ports["kanban"], **(kanban_env or {})},
        "gateway": {
            **common,
            "LONGSHORE_GATEWAY_LISTEN": ports["gateway"],
            "LONGSHORE_GATEWAY_API_KEYS": keys.entries(),
            **(gateway_env or {}),
        },
    }
    log_dir = home / "logs"
    with ExitStack() as stack:
        processes = {
            name: stack.enter_context(
                ServiceProcess(
                    ["python", "-m", f"services.{name}"],
                    env=envs[name],
                    health_addr=ports[name],
                    name=name,
                    log_dir=log_dir,
                )
            )
            for name in ("sandbox", "kanban", "gateway")
        }
        # ExitStack stops in reverse: gateway, kanban, sandbox.
        processes["sandbox"].spawn()
        processes["kanban"].spawn()
        processes["sandbox"].wait_serving(timeout)
        processes["kanban"].wait_serving(timeout)
        processes["gateway"].start(timeout)
        yield RealStack(
            home=home,
            token=token,
            keys=keys,
            sandbox_addr=ports["sandbox"],
            kanban_addr=ports["kanban"],
            gateway_addr=ports["gateway"],
            processes=processes,
        )
