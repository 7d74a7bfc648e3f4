"""The gateway's settings: `gateway` section plus where the backends are.

``gateway.api_keys`` holds hashed API keys, one entry per key, in the form
``name:scope+scope:sha256hex`` (see :mod:`services.gateway.auth`):
comma-separated in ``LONGSHORE_GATEWAY_API_KEYS``, a YAML list in the config
file. ``kanban.addr`` / ``sandbox.addr`` (``LONGSHORE_KANBAN_ADDR``,
``LONGSHORE_SANDBOX_ADDR``) say where the backends listen. The gateway
spreads its calls round robin over every kanban replica: every address
``kanban.addr``'s host name resolves to, or each of a comma-separated list of
``ip:port`` (see docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.runtime.config import BaseSettings, PeerSection

MIB = 1024 * 1024


@dataclass(frozen=True)
class GatewaySection:
    """The gateway's own knobs (``LONGSHORE_GATEWAY_*``)."""

    listen: str = field(
        default="127.0.0.1:50051", metadata={"help": "host:port the gateway binds."}
    )
    addr: str = field(
        default="127.0.0.1:50051", metadata={"help": "host:port where clients find the gateway."}
    )
    max_concurrent_calls: int = field(
        default=20000,
        metadata={
            "help": "Calls in flight (held long polls and streams included; each costs a "
            "coroutine, not a thread) beyond which new calls are RESOURCE_EXHAUSTED; 0 = no limit."
        },
    )
    api_keys: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "API keys as 'name:scope+scope:sha256hex' entries (hash of the key, "
            "scopes among read, write, worker, admin).",
            "secret": True,
        },
    )
    rate_limit_rps: float = field(
        default=500.0,
        metadata={"help": "Calls per second allowed per API key; 0 disables the limit."},
    )
    rate_limit_burst: int = field(
        default=1000, metadata={"help": "Calls a key may make at once above its rate."}
    )
    max_message_bytes: int = field(
        default=4 * MIB,
        metadata={"help": "Largest request or response message forwarded, in bytes."},
    )
    default_deadline_seconds: float = field(
        default=120.0,
        metadata={"help": "Deadline for unary calls that set none (covers a 60 s long poll)."},
    )
    max_deadline_seconds: float = field(
        default=600.0, metadata={"help": "Longest deadline a unary call may ask for."}
    )
    max_stream_seconds: float = field(
        default=86400.0,
        metadata={"help": "Longest a server stream (WatchEvents, Exec, ...) may last."},
    )
    health_probe_timeout_seconds: float = field(
        default=1.0, metadata={"help": "Deadline of each backend health probe in GetStatus."}
    )


@dataclass(frozen=True)
class GatewaySettings(BaseSettings):
    """Everything the gateway process reads at start."""

    gateway: GatewaySection = field(default_factory=GatewaySection)
    kanban: PeerSection = field(default_factory=lambda: PeerSection(addr="127.0.0.1:50052"))
    sandbox: PeerSection = field(default_factory=lambda: PeerSection(addr="127.0.0.1:50053"))
