"""Settings of the kanban-dispatch service (sections `kanban`, `database`, `sandbox`).

Caps are read as text on purpose: the anchor treats 0, a negative number or
a non-integer as "no cap" (with a warning) rather than refusing to start, and
the planner's ``parse_cap`` is the one place that interprets them
(:meth:`DispatchLimits.from_section`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.kanban.planner import PlannerSettings, parse_cap, planner_settings
from services.runtime.config import BaseSettings, PeerSection

#: Largest ``kanban.max_concurrent_calls`` accepted.
MAX_CONCURRENT_CALLS = 100_000


@dataclass(frozen=True)
class KanbanSection:
    """The `kanban` section: server and dispatcher settings."""

    listen: str = field(
        default="127.0.0.1:50052", metadata={"help": "host:port the kanban gRPC server binds."}
    )
    addr: str = field(
        default="127.0.0.1:50052", metadata={"help": "host:port where peers find the service."}
    )
    max_workers: int = field(
        default=32,
        metadata={
            "help": "Threads of the pool every database transaction of a call runs in "
            "(unary calls, each long-poll attempt and stream read); held long polls and "
            "streams wait on the event loop and hold none."
        },
    )
    max_concurrent_calls: int = field(
        default=20000,
        metadata={
            "help": "Calls in flight (held long polls and streams included; each costs a "
            "coroutine, not a thread) beyond which new calls are RESOURCE_EXHAUSTED; "
            f"1 to {MAX_CONCURRENT_CALLS}."
        },
    )
    default_assignee: str = field(
        default="",
        metadata={"help": "Profile given to unassigned ready tasks; empty or blank = none."},
    )
    max_in_progress: str = field(
        default="",
        metadata={"help": "Most tasks running at once overall; empty, 0, negative = no cap."},
    )
    max_in_progress_per_profile: str = field(
        default="",
        metadata={"help": "Most running tasks per profile unless the profile sets its own."},
    )
    max_spawn: str = field(
        default="", metadata={"help": "Most tasks one tick spawns; empty, 0, negative = no cap."}
    )
    failure_limit: str = field(
        default="2",
        metadata={"help": "Counted failures in a row that block a task (the breaker)."},
    )
    retry_initial_backoff_seconds: float = field(
        default=5.0,
        metadata={
            "help": "Delay before retrying a failed task (doubled per failure in a row), "
            "unless its profile's retry policy sets one."
        },
    )
    retry_max_backoff_seconds: float = field(
        default=300.0,
        metadata={"help": "Longest delay between retries, unless the profile's policy sets one."},
    )
    warm_pool_sync_seconds: float = field(
        default=60.0,
        metadata={
            "help": "Seconds between reconciles of the sandbox manager's warm pools with "
            "the profiles' warm_pool_size (also at start; 0: at start only)."
        },
    )
    backend_probe_interval_seconds: float = field(
        default=2.0,
        metadata={
            "help": "Seconds between health probes of the sandbox backend; while it is "
            "down, the delay doubles up to backend_max_probe_interval_seconds."
        },
    )
    backend_max_probe_interval_seconds: float = field(
        default=30.0,
        metadata={"help": "Longest delay between probes of a sandbox backend that is down."},
    )
    claim_ttl_seconds: float = field(
        default=60.0, metadata={"help": "Lease of a claimed run; heartbeats renew it."}
    )
    dispatch_interval_seconds: float = field(
        default=5.0, metadata={"help": "Seconds between dispatcher ticks (it also wakes on ready)."}
    )
    default_max_runtime_seconds: float = field(
        default=3600.0, metadata={"help": "Max runtime of a task whose task and profile set none."}
    )
    run_output_max_bytes: int = field(
        default=1_048_576, metadata={"help": "Output kept per run; beyond it output is dropped."}
    )
    dispatcher_enabled: bool = field(
        default=True, metadata={"help": "Run the dispatcher loop in this process."}
    )

    def __post_init__(self) -> None:
        # Bounded (no "0 = no limit"): each held call is a coroutine, but a
        # flood of them is still memory, and kanban must refuse it itself.
        if not 1 <= self.max_concurrent_calls <= MAX_CONCURRENT_CALLS:
            raise ValueError(
                f"kanban.max_concurrent_calls: must be 1 to {MAX_CONCURRENT_CALLS}, "
                f"got {self.max_concurrent_calls}"
            )
        if self.max_workers < 1:
            raise ValueError(f"kanban.max_workers: must be at least 1, got {self.max_workers}")


@dataclass(frozen=True)
class DatabaseSection:
    """The `database` section."""

    url: str = field(
        default="",
        metadata={
            "help": "SQLAlchemy URL (sqlite:///... or postgresql://...); "
            "empty = SQLite file $LONGSHORE_HOME/kanban.db."
        },
    )
    probe_interval_seconds: float = field(
        default=5.0,
        metadata={"help": "Seconds between background probes (SELECT 1) of the database."},
    )
    probe_timeout_seconds: float = field(
        default=3.0,
        metadata={"help": "A database probe slower than this marks the service NOT_SERVING."},
    )
    trace_statements: bool = field(
        default=False,
        metadata={
            "help": "Trace every SQL statement as a span (OpenTelemetry SQLAlchemy "
            "instrumentation); off, RPC and dispatcher spans are still traced."
        },
    )


def _sandbox_peer() -> PeerSection:
    return PeerSection(addr="127.0.0.1:50053")


@dataclass(frozen=True)
class KanbanSettings(BaseSettings):
    """Every setting of the kanban-dispatch service."""

    kanban: KanbanSection = field(default_factory=KanbanSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    sandbox: PeerSection = field(default_factory=_sandbox_peer)


@dataclass(frozen=True)
class DispatchLimits:
    """The dispatcher's interpreted limits, parsed once per process.

    Attributes:
        planner: Default assignee, caps and failure limit for the planner.
        max_spawn: Most spawns per tick, or None.
    """

    planner: PlannerSettings = field(default_factory=PlannerSettings)
    max_spawn: int | None = None

    @classmethod
    def from_section(cls, section: KanbanSection) -> DispatchLimits:
        """Interpret the `kanban` section's limits, warning about invalid caps."""
        failure_limit = parse_cap(section.failure_limit, setting="kanban.failure_limit")
        return cls(
            planner=planner_settings(
                default_assignee=section.default_assignee,
                max_in_progress=section.max_in_progress,
                max_in_progress_per_profile=section.max_in_progress_per_profile,
                failure_limit=failure_limit if failure_limit is not None else 2,
                retry_initial_backoff_seconds=section.retry_initial_backoff_seconds,
                retry_max_backoff_seconds=section.retry_max_backoff_seconds,
            ),
            max_spawn=parse_cap(section.max_spawn, setting="kanban.max_spawn"),
        )
