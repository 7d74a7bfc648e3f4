"""Domain records to and from ``longshore.sandbox.v1`` messages."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2
from longshore.sandbox.v1 import lifecycle_pb2, sandbox_pb2, sandbox_service_pb2

from services.runtime.errors import InvalidArgument, OutOfRange
from services.sandbox import labels
from services.sandbox.execution import MAX_TIMEOUT_SECONDS
from services.sandbox.lifecycle.leases import PAUSE, REMOVE, Lease
from services.sandbox.lifecycle.snapshots import Snapshot
from services.sandbox.model import (
    AcquireResult,
    ExecCommand,
    ExecExit,
    Network,
    Outcome,
    OutputChunk,
    SandboxInfo,
    Spec,
    StreamKind,
    Volume,
)
from services.sandbox.reaper import Decision, ReapReport

STATES: dict[sandbox_pb2.SandboxState.ValueType, str] = {
    sandbox_pb2.SANDBOX_STATE_CREATED: "created",
    sandbox_pb2.SANDBOX_STATE_RUNNING: "running",
    sandbox_pb2.SANDBOX_STATE_PAUSED: "paused",
    sandbox_pb2.SANDBOX_STATE_RESTARTING: "restarting",
    sandbox_pb2.SANDBOX_STATE_EXITED: "exited",
    sandbox_pb2.SANDBOX_STATE_REMOVING: "removing",
    sandbox_pb2.SANDBOX_STATE_DEAD: "dead",
}
_STATE_OF = {name: value for value, name in STATES.items()}
_OUTCOMES = {
    Outcome.REUSED_RUNNING: sandbox_pb2.REUSE_OUTCOME_REUSED_RUNNING,
    Outcome.RESTARTED: sandbox_pb2.REUSE_OUTCOME_RESTARTED,
    Outcome.CREATED: sandbox_pb2.REUSE_OUTCOME_CREATED,
    Outcome.REPLACED_CONFIG_CHANGED: sandbox_pb2.REUSE_OUTCOME_REPLACED_CONFIG_CHANGED,
    Outcome.REPLACED_START_FAILED: sandbox_pb2.REUSE_OUTCOME_REPLACED_START_FAILED,
    Outcome.TAKEN_FROM_POOL: sandbox_pb2.REUSE_OUTCOME_TAKEN_FROM_POOL,
}
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: Longest page token this service issues is ~120 characters; more is forged.
MAX_PAGE_TOKEN_CHARS = 512
#: Largest creation time a cursor may hold (ns; year 2262).
_MAX_CURSOR_NS = 2**63 - 1
_CURSOR_ID_CHARS = 128
#: Longest ReapOrphans max_age (100 years, in seconds).
MAX_REAP_AGE_SECONDS = 100 * 365 * 24 * 3600
#: Longest Duration any request may carry (in seconds), checked before a
#: timedelta could overflow.
_MAX_DURATION_SECONDS = 10**10


def spec_from_proto(msg: sandbox_pb2.SandboxSpec) -> Spec:
    """A domain spec from the request's ``SandboxSpec``."""
    network = {
        sandbox_pb2.NETWORK_MODE_BRIDGE: Network.BRIDGE,
        sandbox_pb2.NETWORK_MODE_NONE: Network.NONE,
    }.get(msg.network)
    return Spec(
        image=msg.image,
        cpus=msg.cpus,
        memory_bytes=msg.memory_bytes,
        pids_limit=msg.pids_limit,
        env=dict(msg.env),
        volumes=tuple(Volume(v.host_path, v.container_path, v.read_only) for v in msg.volumes),
        workdir=msg.workdir,
        network=network,
        read_only_rootfs=msg.read_only_rootfs,
        user=msg.user,
        cap_add=tuple(msg.cap_add),
    )


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _duration(value: timedelta | float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(value if isinstance(value, timedelta) else timedelta(seconds=value))
    return out


def sandbox_to_proto(info: SandboxInfo, lease: Lease | None = None) -> sandbox_pb2.Sandbox:
    """A ``Sandbox`` message from a domain record (and its lease, if it has one)."""
    lbl = info.labels
    msg = sandbox_pb2.Sandbox(
        sandbox_id=info.sandbox_id,
        name=info.name,
        task_id=info.task,
        profile=lbl.get(labels.PROFILE, ""),
        deployment=lbl.get(labels.DEPLOYMENT, ""),
        persist=lbl.get(labels.PERSIST) == "true",
        state=_STATE_OF.get(info.state, sandbox_pb2.SANDBOX_STATE_UNSPECIFIED),
        image=info.image,
        config_hash=lbl.get(labels.CONFIG_HASH, ""),
        owner=lbl.get(labels.OWNER, ""),
        labels=dict(lbl),
        warm_pool=info.warm_pool,
    )
    for field_name, value in (
        ("create_time", info.create_time),
        ("start_time", info.start_time),
        ("finish_time", info.finish_time),
        ("last_used_time", info.last_used_time),
    ):
        stamp = _timestamp(value)
        if stamp is not None:
            getattr(msg, field_name).CopyFrom(stamp)
    if lease is not None:
        msg.lease_expire_time.FromDatetime(lease.expire_time)
        msg.lease_expiry = _LEASE_EXPIRY[lease.on_expiry]
    return msg


def acquire_to_proto(
    result: AcquireResult, lease: Lease | None = None
) -> sandbox_service_pb2.AcquireSandboxResponse:
    """The ``AcquireSandboxResponse`` of an acquire (with the sandbox's lease, if any)."""
    return sandbox_service_pb2.AcquireSandboxResponse(
        sandbox=sandbox_to_proto(result.sandbox, lease),
        reused=result.reused,
        outcome=_OUTCOMES[result.outcome],
        reason=result.reason,
    )


def states_from_proto(values: list[int]) -> list[str]:
    """Engine state names of a state filter.

    Raises:
        InvalidArgument: An unspecified or unknown state.
    """
    out = []
    for i, value in enumerate(values):
        name = STATES.get(sandbox_pb2.SandboxState.ValueType(value))
        if name is None:
            raise InvalidArgument(f"states[{i}]: must be a specified sandbox state")
        out.append(name)
    return out


def page_size(value: int) -> int:
    """The effective page size (0 = 100, capped at 1000).

    Raises:
        InvalidArgument: Negative page_size.
    """
    if value < 0:
        raise InvalidArgument("page_size: must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(info: SandboxInfo) -> str:
    """An opaque cursor after ``info`` in newest-first order."""
    raw = json.dumps({"c": info.created_ns, "i": info.sandbox_id}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> tuple[int, str] | None:
    """The cursor of a page token (None for the first page).

    Raises:
        InvalidArgument: The token is not one this service issued.
    """
    if not token:
        return None
    bad = InvalidArgument("page_token: not a token from a previous response")
    if len(token) > MAX_PAGE_TOKEN_CHARS or not token.isascii():
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, binascii.Error, RecursionError):
        raise bad from None
    # Field by field: anything but {"c": <non-negative int>, "i": <short str>} is forged.
    if not isinstance(data, dict) or set(data) != {"c", "i"}:
        raise bad
    created, last_id = data["c"], data["i"]
    if isinstance(created, bool) or not isinstance(created, int):
        raise bad
    if not 0 <= created <= _MAX_CURSOR_NS:
        raise bad
    if not isinstance(last_id, str) or len(last_id) > _CURSOR_ID_CHARS:
        raise bad
    return created, last_id


def duration_seconds(
    value: duration_pb2.Duration, field_name: str, maximum: float = _MAX_DURATION_SECONDS
) -> float:
    """Seconds of a request's Duration, range-checked before any conversion.

    Raises:
        InvalidArgument: Negative, or nanos outside the Duration's own range.
        OutOfRange: Longer than ``maximum`` seconds.
    """
    if value.seconds < 0 or value.nanos < 0:
        raise InvalidArgument(f"{field_name}: must not be negative")
    if value.nanos > 999_999_999:
        raise InvalidArgument(f"{field_name}: nanos must be below 1e9")
    if value.seconds > maximum:
        raise OutOfRange(f"{field_name}: at most {int(maximum)} s")
    return value.seconds + value.nanos / 1e9


def max_age_from_proto(req: sandbox_service_pb2.ReapOrphansRequest) -> timedelta | None:
    """The ``max_age`` of a ReapOrphans request (None: the default).

    Raises:
        InvalidArgument: A negative max_age.
        OutOfRange: A max_age past 100 years.
    """
    if not req.HasField("max_age"):
        return None
    return timedelta(seconds=duration_seconds(req.max_age, "max_age", MAX_REAP_AGE_SECONDS))


def exec_from_proto(req: sandbox_service_pb2.ExecRequest) -> ExecCommand:
    """A domain command from an ``ExecRequest``.

    Raises:
        InvalidArgument: A negative timeout.
        OutOfRange: A timeout too long to represent.
    """
    timeout = 0.0
    if req.HasField("timeout"):
        timeout = duration_seconds(req.timeout, "timeout", MAX_TIMEOUT_SECONDS)
    return ExecCommand(
        argv=tuple(req.argv),
        env=dict(req.env),
        workdir=req.workdir,
        stdin=req.stdin,
        timeout_seconds=timeout,
        max_output_bytes=req.max_output_bytes,
        user=req.user,
    )


def exec_event_to_proto(event: OutputChunk | ExecExit) -> sandbox_service_pb2.ExecResponse:
    """One ``ExecResponse`` of the stream."""
    if isinstance(event, OutputChunk):
        stream = (
            sandbox_pb2.OUTPUT_STREAM_STDERR
            if event.stream is StreamKind.STDERR
            else sandbox_pb2.OUTPUT_STREAM_STDOUT
        )
        return sandbox_service_pb2.ExecResponse(
            output=sandbox_pb2.OutputChunk(stream=stream, data=event.data)
        )
    return sandbox_service_pb2.ExecResponse(
        exit=sandbox_pb2.ExecExit(
            exit_code=event.exit_code,
            signal=event.signal,
            timed_out=event.timed_out,
            truncated=event.truncated,
            duration=_duration(event.duration_seconds),
            output_bytes=event.output_bytes,
        )
    )


def _decisions(items: list[Decision]) -> list[sandbox_service_pb2.ReapDecision]:
    return [
        sandbox_service_pb2.ReapDecision(
            sandbox_id=d.candidate.sandbox_id,
            name=d.candidate.name,
            profile=d.candidate.labels.get(labels.PROFILE, ""),
            task_id=labels.task_of(d.candidate.labels, d.candidate.name),
            reason=d.reason,
        )
        for d in items
    ]


def reap_to_proto(report: ReapReport) -> sandbox_service_pb2.ReapOrphansResponse:
    """The ``ReapOrphansResponse`` of a sweep."""
    return sandbox_service_pb2.ReapOrphansResponse(
        removed=_decisions(report.removed),
        spared=_decisions(report.spared),
        failed=_decisions(report.failed),
        dry_run=report.dry_run,
        max_age=_duration(report.max_age),
    )


# ---- pause, snapshots, leases --------------------------------------------------------

_LEASE_EXPIRY = {PAUSE: sandbox_pb2.LEASE_EXPIRY_PAUSE, REMOVE: sandbox_pb2.LEASE_EXPIRY_REMOVE}
_EXPIRY_OF = {value: name for name, value in _LEASE_EXPIRY.items()}
#: Shortest lease a caller may set.
MIN_LEASE_SECONDS = 1


def lease_from_proto(
    request: lifecycle_pb2.SetSandboxLeaseRequest | sandbox_pb2.LeaseTerms,
    *,
    max_seconds: int,
    default_action: str,
    field: str = "",
) -> tuple[timedelta, str]:
    """The ttl and expiry action of a SetSandboxLease request or an acquire's lease terms.

    Args:
        field: Prefix of the field names in messages (``lease.`` for an acquire).

    Raises:
        InvalidArgument: ``ttl`` unset, under 1 s or malformed; an unknown ``on_expiry``.
        OutOfRange: ``ttl`` over ``max_seconds`` (``sandbox.max_lease_seconds``).
    """
    if not request.HasField("ttl"):
        raise InvalidArgument(f"{field}ttl: required")
    ttl = request.ttl
    if abs(ttl.nanos) >= 10**9 or (ttl.seconds > 0 and ttl.nanos < 0):
        raise InvalidArgument(
            f"{field}ttl: malformed Duration (nanos out of range or of the wrong sign)"
        )
    seconds = ttl.seconds + ttl.nanos / 1e9
    if seconds < MIN_LEASE_SECONDS:
        raise InvalidArgument(f"{field}ttl: at least {MIN_LEASE_SECONDS} s, got {seconds:g} s")
    if seconds > max_seconds:
        raise OutOfRange(
            f"{field}ttl: at most {max_seconds} s (sandbox.max_lease_seconds), got {seconds:g} s"
        )
    if request.on_expiry == sandbox_pb2.LEASE_EXPIRY_UNSPECIFIED:
        return timedelta(seconds=seconds), default_action
    action = _EXPIRY_OF.get(request.on_expiry)
    if action is None:
        raise InvalidArgument(f"{field}on_expiry: unknown value {request.on_expiry}")
    return timedelta(seconds=seconds), action


def snapshot_to_proto(snapshot: Snapshot) -> lifecycle_pb2.Snapshot:
    """A ``Snapshot`` message from a domain record."""
    msg = lifecycle_pb2.Snapshot(
        image=snapshot.image,
        image_id=snapshot.image_id,
        sandbox_id=snapshot.sandbox_id,
        task_id=snapshot.task_id,
        profile=snapshot.profile,
        size_bytes=snapshot.size_bytes,
    )
    stamp = _timestamp(snapshot.create_time)
    if stamp is not None:
        msg.create_time.CopyFrom(stamp)
    return msg


_NETWORK_MODES = frozenset(sandbox_pb2.NetworkMode.values())


def checked_spec(msg: sandbox_pb2.SandboxSpec) -> Spec:
    """The domain spec of a request, refusing what the domain record cannot say."""
    if msg.network not in _NETWORK_MODES:
        raise InvalidArgument(f"spec.network: unknown network mode {msg.network}")
    return spec_from_proto(msg)
