"""Settings of the sandbox manager (``LONGSHORE_SANDBOX_*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.runtime.config import BaseSettings

#: Capabilities a sandbox keeps after ``cap_drop=ALL``: enough for a root
#: process to install packages (chown, permission overrides, dropping to a
#: package user) and for the manager's timeout killer to signal the command's
#: processes. Everything else (NET_RAW, MKNOD, SYS_CHROOT, SETFCAP, ...) is gone.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETGID",
    "SETUID",
    "KILL",
)


@dataclass(frozen=True)
class SandboxSection:
    """The ``sandbox`` section: where the manager listens and how sandboxes behave."""

    listen: str = field(default="127.0.0.1:50053", metadata={"help": "host:port to bind."})
    addr: str = field(
        default="127.0.0.1:50053", metadata={"help": "host:port where peers find the manager."}
    )
    max_workers: int = field(default=32, metadata={"help": "gRPC handler threads."})
    docker_timeout_seconds: float = field(
        default=60.0, metadata={"help": "HTTP timeout of ordinary Docker engine calls."}
    )
    default_image: str = field(
        default="", metadata={"help": "Image used when a spec names none (empty: required)."}
    )
    default_cpus: float = field(default=1.0, metadata={"help": "CPU limit in cores."})
    default_memory_bytes: int = field(
        default=1024 * 1024 * 1024, metadata={"help": "Memory limit in bytes."}
    )
    default_pids_limit: int = field(default=512, metadata={"help": "Process limit."})
    tmp_size_bytes: int = field(
        default=256 * 1024 * 1024, metadata={"help": "Size of the tmpfs mounted at /tmp."}
    )
    keepalive_command: tuple[str, ...] = field(
        default=("sleep", "infinity"),
        metadata={"help": "Command that keeps a sandbox alive (runs under the init process)."},
    )
    capabilities: tuple[str, ...] = field(
        default=DEFAULT_CAPABILITIES,
        metadata={"help": "Capabilities kept after dropping all (comma-separated)."},
    )
    lifetime_seconds: int = field(
        default=300,
        metadata={
            "help": "Idle time after which a non-persistent sandbox is removed; exited "
            "sandboxes are reaped after 2x this (floored at 60 s)."
        },
    )
    idle_stop_seconds: int = field(
        default=0,
        metadata={"help": "Stop persistent sandboxes idle this long (0 = never)."},
    )
    reaper_enabled: bool = field(
        default=True, metadata={"help": "Run the orphan reaper at start and periodically."}
    )
    reap_interval_seconds: float = field(
        default=60.0, metadata={"help": "Seconds between reaper and idle sweeps."}
    )
    reap_workers: int = field(
        default=8, metadata={"help": "Concurrent inspect/remove calls of one reaper sweep."}
    )
    exec_timeout_seconds: float = field(
        default=600.0, metadata={"help": "Default timeout of one Exec."}
    )
    exec_max_output_bytes: int = field(
        default=8 * 1024 * 1024, metadata={"help": "Default output cap of one Exec."}
    )
    stop_timeout_seconds: int = field(
        default=5, metadata={"help": "Grace period of a stop before the engine kills."}
    )
    cleanup_workers: int = field(
        default=4, metadata={"help": "Threads that stop and remove released sandboxes."}
    )
    cleanup_drain_seconds: float = field(
        default=15.0, metadata={"help": "How long shutdown waits for outstanding cleanups."}
    )


@dataclass(frozen=True)
class SandboxSettings(BaseSettings):
    """Settings of the sandbox manager process."""

    sandbox: SandboxSection = field(default_factory=SandboxSection)
