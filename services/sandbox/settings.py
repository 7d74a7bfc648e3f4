"""Settings of the sandbox manager (``LONGSHORE_SANDBOX_*``)."""

from __future__ import annotations

import math
import re
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


#: A capability name as the engine spells it (with or without ``CAP_``).
CAPABILITY_NAME = re.compile(r"\A(CAP_)?[A-Z_]{2,32}\Z")
#: Most spare execs a setting may ask for (each is a shell waiting in a sandbox).
MAX_SPARES = 1024


@dataclass(frozen=True)
class SandboxSection:
    """The ``sandbox`` section: where the manager listens and how sandboxes behave."""

    listen: str = field(default="127.0.0.1:50053", metadata={"help": "host:port to bind."})
    addr: str = field(
        default="127.0.0.1:50053", metadata={"help": "host:port where peers find the manager."}
    )
    max_workers: int = field(
        default=32,
        metadata={
            "help": "Threads of the blocking pool the (grpc.aio) handlers run Docker calls in:"
            " bounds the engine calls in flight, each running Exec holding one."
        },
    )
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
    allowed_host_paths: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Absolute host directories a spec may bind-mount (a bind's host path "
            "must equal one or lie under one; comma-separated; empty: no host binds). "
            "Named volumes need no entry; the engine socket is always refused."
        },
    )
    allowed_capabilities: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Capabilities a spec may add on top of sandbox.capabilities "
            "(comma-separated; empty: none)."
        },
    )
    max_cpus: float = field(
        default=2.0,
        metadata={"help": "Largest CPU limit a spec may ask for, in cores (at most the host's)."},
    )
    max_memory_bytes: int = field(
        default=16 * 1024 * 1024 * 1024,
        metadata={"help": "Largest memory limit a spec may ask for, in bytes."},
    )
    max_pids_limit: int = field(
        default=4096, metadata={"help": "Largest process limit a spec may ask for."}
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
    max_processes_per_sandbox: int = field(
        default=32,
        metadata={
            "help": "Running processes (StartProcess, RunProcess) per sandbox at most "
            "(RESOURCE_EXHAUSTED above)."
        },
    )
    process_output_buffer_bytes: int = field(
        default=1024 * 1024,
        metadata={
            "help": "Output bytes kept per process for ConnectProcess replays; older "
            "output is reported skipped."
        },
    )
    spare_processes_per_sandbox: int = field(
        default=1,
        metadata={
            "help": "Spare execs kept started per running sandbox, so a process start costs "
            "no docker exec (0: off; see docs/sandbox-processes.md)."
        },
    )
    max_spare_processes: int = field(
        default=64,
        metadata={"help": "Spare execs across all sandboxes of this manager at most."},
    )
    process_retention_seconds: float = field(
        default=300.0,
        metadata={"help": "How long an exited process (and its output) stays listed."},
    )
    max_sessions_per_sandbox: int = field(
        default=8,
        metadata={
            "help": "Most shell sessions open at once in one sandbox (OpenSession is "
            "RESOURCE_EXHAUSTED above it)."
        },
    )
    session_idle_timeout_seconds: float = field(
        default=600.0,
        metadata={
            "help": "Seconds a shell session may go without a command before it is closed, "
            "unless OpenSession asks for another idle_timeout."
        },
    )
    max_file_bytes: int = field(
        default=1024 * 1024 * 1024,
        metadata={
            "help": "Largest file WriteFiles writes or ReadFile reads, in bytes "
            "(RESOURCE_EXHAUSTED above it)."
        },
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
    engine_probe_interval_seconds: float = field(
        default=2.0,
        metadata={
            "help": "Seconds between background pings of the Docker engine; while one "
            "fails, health is NOT_SERVING and calls fail fast with UNAVAILABLE."
        },
    )
    engine_probe_timeout_seconds: float = field(
        default=2.0, metadata={"help": "Timeout of one engine ping, in seconds."}
    )
    pause_idle_after_seconds: int = field(
        default=0,
        metadata={
            "help": "Pause (cgroup freezer) persistent running sandboxes idle this long; "
            "the next call resumes them (0 = never). A longer idle_stop_seconds still stops."
        },
    )
    max_snapshots: int = field(
        default=100,
        metadata={"help": "Most snapshot images this deployment keeps (RESOURCE_EXHAUSTED above)."},
    )
    snapshot_repository: str = field(
        default="longshore-snapshot",
        metadata={
            "help": "Image repository namespace of snapshots; each deployment commits to "
            "<namespace>/<deployment>."
        },
    )
    max_lease_seconds: int = field(
        default=7 * 24 * 3600,
        metadata={
            "help": "Longest lease SetSandboxLease may set, in seconds (OUT_OF_RANGE above)."
        },
    )
    lease_expiry_action: str = field(
        default="pause",
        metadata={
            "help": "What happens to a sandbox whose lease ends when the lease names "
            "nothing: 'pause' or 'remove'."
        },
    )
    max_warm_per_pool: int = field(
        default=8,
        metadata={
            "help": "Most warm sandboxes one profile's pool may ask for (OUT_OF_RANGE above)."
        },
    )
    max_warm_total: int = field(
        default=16,
        metadata={
            "help": "Most warm sandboxes all pools of this manager together may ask for "
            "(OUT_OF_RANGE above)."
        },
    )
    warm_fill_concurrency: int = field(
        default=2,
        metadata={"help": "Warm-pool members created at once, across all pools."},
    )
    warm_fill_interval_seconds: float = field(
        default=10.0,
        metadata={
            "help": "Seconds between the warm-pool filler's rounds when nothing wakes it "
            "(a handout or SetWarmPool wakes it at once)."
        },
    )

    def __post_init__(self) -> None:
        # The policy settings are checked once here, so a manager never starts
        # with an allowlist it would misread or defaults its own maxima refuse.
        for path in self.allowed_host_paths:
            if not path.startswith("/") or ".." in path.split("/"):
                raise ValueError(
                    f"sandbox.allowed_host_paths: {path[:100]!r} is not an absolute path "
                    "without '..'"
                )
        for cap in self.allowed_capabilities:
            if not CAPABILITY_NAME.match(cap.strip().upper()):
                raise ValueError(f"sandbox.allowed_capabilities: invalid capability {cap[:100]!r}")
        if not (math.isfinite(self.max_cpus) and self.max_cpus > 0):
            raise ValueError(f"sandbox.max_cpus: must be a positive number, got {self.max_cpus}")
        for name in (
            "max_memory_bytes",
            "max_pids_limit",
            "max_file_bytes",
            "max_processes_per_sandbox",
            "process_output_buffer_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"sandbox.{name}: must be positive, got {getattr(self, name)}")
        if not (
            math.isfinite(self.session_idle_timeout_seconds)
            and 0 < self.session_idle_timeout_seconds <= 7 * 24 * 3600
        ):
            raise ValueError(
                "sandbox.session_idle_timeout_seconds: must be above 0 and at most 7 days, "
                f"got {self.session_idle_timeout_seconds}"
            )
        for name in ("spare_processes_per_sandbox", "max_spare_processes"):
            if not 0 <= getattr(self, name) <= MAX_SPARES:
                raise ValueError(
                    f"sandbox.{name}: must be 0 to {MAX_SPARES}, got {getattr(self, name)}"
                )
        if self.lease_expiry_action not in ("pause", "remove"):
            raise ValueError(
                "sandbox.lease_expiry_action: expected 'pause' or 'remove', got "
                f"{self.lease_expiry_action[:100]!r}"
            )
        for name in (
            "max_snapshots",
            "max_lease_seconds",
            "max_warm_per_pool",
            "max_warm_total",
            "warm_fill_concurrency",
            "max_sessions_per_sandbox",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"sandbox.{name}: must be positive, got {getattr(self, name)}")
        if not self.warm_fill_interval_seconds > 0:
            raise ValueError(
                "sandbox.warm_fill_interval_seconds: must be positive, got "
                f"{self.warm_fill_interval_seconds}"
            )
        if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", self.snapshot_repository):
            raise ValueError(
                "sandbox.snapshot_repository: expected a lower-case image repository name, "
                f"got {self.snapshot_repository[:100]!r}"
            )
        for default, limit in (
            ("default_cpus", "max_cpus"),
            ("default_memory_bytes", "max_memory_bytes"),
            ("default_pids_limit", "max_pids_limit"),
        ):
            if getattr(self, default) > getattr(self, limit):
                raise ValueError(
                    f"sandbox.{default}: {getattr(self, default)} exceeds "
                    f"sandbox.{limit} ({getattr(self, limit)})"
                )


@dataclass(frozen=True)
class SandboxSettings(BaseSettings):
    """Settings of the sandbox manager process."""

    sandbox: SandboxSection = field(default_factory=SandboxSection)
