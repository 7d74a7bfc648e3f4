"""``longshore dispatch``: run (or plan) one dispatcher tick and say what it decided."""

from __future__ import annotations

import argparse
from typing import Any

from longshore.kanban.v1 import dispatch_pb2, kanban_service_pb2

from clients.cli.context import Context
from clients.cli.output import fmt_duration


def register(sub: Any) -> None:
    """Add the ``dispatch`` command."""
    parser = sub.add_parser("dispatch", help="run one dispatcher tick now (or plan one)")
    parser.add_argument("--board", default="", help="only this board")
    parser.add_argument("--dry-run", action="store_true", help="plan only; write nothing")
    parser.add_argument("--max", type=int, default=0, help="spawn at most N (0 = the setting)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run the tick and print every decision."""
    request = kanban_service_pb2.DispatchRequest(
        board_id=args.board, dry_run=args.dry_run, max_spawn=args.max
    )
    with ctx.out.progress("dispatching" if not args.dry_run else "planning a tick"):
        reply = ctx.conn.kanban.Dispatch(request)
    if ctx.out.json_mode:
        ctx.out.json(reply)
        return 0
    for text in describe(reply.result):
        ctx.out.line(text)
    ctx.out.line(summary(reply.result, fmt_duration(reply.duration)))
    return 0


def describe(result: dispatch_pb2.DispatchResult) -> list[str]:
    """One line per decision, worded the way operators read a tick."""
    would = "Would spawn" if result.dry_run else "Spawned"
    lines: list[str] = []
    lines += [f"Reclaimed (run {r.run_id}, {r.reason}): {r.task_id}" for r in result.reclaimed]
    lines += [
        f"Reclaimed (run {r.run_id} crashed, {r.reason}): {r.task_id}" for r in result.crashed
    ]
    lines += [f"Promoted (parents done): {t}" for t in result.promoted]
    lines += [
        f"Auto-assigned to kanban.default_assignee={r.assignee!r}: {r.task_id}"
        for r in result.auto_assigned_default
    ]
    for s in result.spawned:
        where = ""
        if s.run_id:
            where = f", run {s.run_id}" + (f", sandbox {s.sandbox_id[:12]}" if s.sandbox_id else "")
        lines.append(f"{would} ({s.assignee}{where}): {s.task_id}")
    lines += [
        f"Deferred ({c.assignee} at per-profile cap, {c.running} running): {c.task_id}"
        for c in result.skipped_per_profile_capped
    ]
    lines += [f"Skipped (unassigned): {t}" for t in result.skipped_unassigned]
    lines += [
        f"Skipped ({r.assignee} is not spawnable): {r.task_id}" for r in result.skipped_nonspawnable
    ]
    lines += [
        f"Awaiting worker ({r.assignee} is external): {r.task_id}" for r in result.awaiting_worker
    ]
    lines += [
        f"Spawn failed ({f.assignee}, failure {f.failure_count}): {f.task_id}: {f.error}"
        for f in result.spawn_failed
    ]
    lines += [f"Blocked by the breaker ({b.reason}): {b.task_id}" for b in result.auto_blocked]
    if result.stopped_reason:
        lines.append(f"Stopped early: {result.stopped_reason}")
        lines += [f"Not considered (walk stopped): {t}" for t in result.not_considered]
    return lines


def summary(result: dispatch_pb2.DispatchResult, took: str) -> str:
    """The closing line: counts per bucket, and a reminder when nothing was written."""
    counts = [
        (len(result.spawned), "spawned" if not result.dry_run else "to spawn"),
        (len(result.skipped_per_profile_capped), "deferred"),
        (len(result.skipped_unassigned) + len(result.skipped_nonspawnable), "skipped"),
        (len(result.awaiting_worker), "awaiting a worker"),
        (len(result.spawn_failed), "failed"),
    ]
    parts = ", ".join(f"{n} {label}" for n, label in counts if n) or "nothing to do"
    prefix = "Dry run (nothing written)" if result.dry_run else "Tick"
    return f"{prefix}: {parts} in {took}"
