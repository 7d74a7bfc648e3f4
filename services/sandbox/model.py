"""Domain records of the sandbox manager (no protobuf, no Docker types)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from services.sandbox import labels as label_names


class Network(enum.Enum):
    """What network a sandbox may reach."""

    BRIDGE = "bridge"
    NONE = "none"


class Outcome(enum.Enum):
    """How an acquire obtained its sandbox (mirrors ``ReuseOutcome``)."""

    REUSED_RUNNING = "reused_running"
    RESTARTED = "restarted"
    CREATED = "created"
    REPLACED_CONFIG_CHANGED = "replaced_config_changed"
    REPLACED_START_FAILED = "replaced_start_failed"
    TAKEN_FROM_POOL = "taken_from_pool"

    @property
    def reused(self) -> bool:
        """Whether an existing container was used."""
        return self in (Outcome.REUSED_RUNNING, Outcome.RESTARTED)


@dataclass(frozen=True)
class Volume:
    """A host path bound into a sandbox."""

    host_path: str
    container_path: str
    read_only: bool = False


@dataclass(frozen=True)
class Spec:
    """A requested sandbox spec; zero values take the manager's defaults."""

    image: str = ""
    cpus: float = 0.0
    memory_bytes: int = 0
    pids_limit: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[Volume, ...] = ()
    workdir: str = ""
    network: Network | None = None
    read_only_rootfs: bool = False
    user: str = ""
    cap_add: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResolvedSpec:
    """A validated spec with every default filled in."""

    image: str
    cpus: float
    memory_bytes: int
    pids_limit: int
    env: Mapping[str, str]
    volumes: tuple[Volume, ...]
    workdir: str
    network: Network
    read_only_rootfs: bool
    user: str
    cap_add: tuple[str, ...]
    config_hash: str

    def __repr__(self) -> str:
        # Env values are secrets: never let a repr (logs, tracebacks) show them.
        return f"ResolvedSpec(image={self.image!r}, config_hash={self.config_hash!r})"


@dataclass(frozen=True)
class SandboxInfo:
    """One sandbox as the engine reports it."""

    sandbox_id: str
    name: str
    state: str
    image: str
    labels: Mapping[str, str]
    create_time: datetime | None = None
    start_time: datetime | None = None
    finish_time: datetime | None = None
    last_used_time: datetime | None = None
    created_ns: int = 0
    #: The container's configured user (``Config.User``; "" = the image's
    #: default). Known from an inspect only; a list row leaves it "".
    user: str = ""

    @property
    def task(self) -> str:
        """The task label value it belongs to ("" for a warm member no task took yet)."""
        return label_names.task_of(self.labels, self.name)

    @property
    def warm_pool(self) -> str:
        """The profile whose warm pool holds it while no task has it, else ""."""
        if label_names.is_pool_member(self.labels) and not self.task:
            return self.labels.get(label_names.PROFILE, "")
        return ""


@dataclass(frozen=True)
class AcquireResult:
    """What an acquire returns."""

    sandbox: SandboxInfo
    outcome: Outcome
    reason: str

    @property
    def reused(self) -> bool:
        """Whether an existing container was used."""
        return self.outcome.reused


@dataclass(frozen=True)
class ExecCommand:
    """One command to run in a sandbox."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = ""
    stdin: bytes = b""
    timeout_seconds: float = 0.0
    max_output_bytes: int = 0
    user: str = ""

    def __repr__(self) -> str:
        return f"ExecCommand(argv={self.argv!r}, env_names={sorted(self.env)!r})"


class StreamKind(enum.Enum):
    """Which stream an output chunk came from."""

    STDOUT = 1
    STDERR = 2
    #: A process's terminal: stdout and stderr merged, as the terminal shows them.
    PTY = 3


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a command's output."""

    stream: StreamKind
    data: bytes


@dataclass(frozen=True)
class ExecExit:
    """The final status of a command."""

    exit_code: int
    signal: int
    timed_out: bool
    truncated: bool
    duration_seconds: float
    output_bytes: int


@dataclass(frozen=True)
class WarmPool:
    """One profile's warm pool as ``ListWarmPools`` reports it."""

    profile: str
    config_hash: str
    size: int
    ready: int
    starting: int
    image: str
    #: Why the pool is short of ``size`` ("" when healthy).
    reason: str = ""
