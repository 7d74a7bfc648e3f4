"""``longshore sandbox ls|exec|rm|reap``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from google.protobuf.duration_pb2 import Duration
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2

from clients.cli.connection import paged
from clients.cli.context import Context
from clients.cli.errors import EXIT_USAGE, CliError
from clients.cli.output import enum_label, fmt_duration, fmt_time, to_dict

STATES = {
    enum_label(name, "SANDBOX_STATE_"): value
    for name, value in sandbox_pb2.SandboxState.items()
    if value != sandbox_pb2.SANDBOX_STATE_UNSPECIFIED
}


def register(sub: Any) -> None:
    """Add the ``sandbox`` command group."""
    parser = sub.add_parser("sandbox", help="sandboxes (this deployment's containers)")
    cmds = parser.add_subparsers(dest="sandbox_cmd", required=True, metavar="COMMAND")
    ls = cmds.add_parser("ls", help="list sandboxes, newest first")
    ls.add_argument("--profile", default="")
    ls.add_argument("--task", default="")
    ls.add_argument("--state", action="append", choices=sorted(STATES), default=[])
    ls.set_defaults(run=_ls)
    exe = cmds.add_parser("exec", help="run a command in a sandbox: exec ID -- CMD ARGS...")
    exe.add_argument("sandbox_id")
    exe.add_argument("argv", nargs=argparse.REMAINDER, help="command and arguments")
    exe.add_argument("--kill-after", dest="exec_timeout", type=float, help="kill after N seconds")
    exe.add_argument("--workdir", default="")
    exe.set_defaults(run=_exec)
    rm = cmds.add_parser("rm", help="stop and remove a sandbox")
    rm.add_argument("sandbox_id")
    rm.set_defaults(run=_rm)
    reap = cmds.add_parser("reap", help="remove old exited sandboxes")
    reap.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    reap.add_argument("--profile", default="")
    reap.add_argument("--max-age", type=float, help="seconds (default: 2 x lifetime)")
    reap.set_defaults(run=_reap)


def _ls(args: argparse.Namespace, ctx: Context) -> int:
    request = sandbox_service_pb2.ListSandboxesRequest(
        profile=args.profile, task_id=args.task, states=[STATES[s] for s in args.state]
    )
    boxes = list(paged(ctx.conn.sandbox.ListSandboxes, request, "sandboxes"))
    if ctx.out.json_mode:
        ctx.out.json({"sandboxes": [to_dict(b) for b in boxes]})
        return 0
    rows = [
        (
            b.sandbox_id[:12],
            enum_label(sandbox_pb2.SandboxState.Name(b.state), "SANDBOX_STATE_"),
            b.profile,
            b.task_id,
            "yes" if b.persist else "no",
            b.image,
            fmt_time(b.create_time),
        )
        for b in boxes
    ]
    ctx.out.table(("SANDBOX", "STATE", "PROFILE", "TASK", "PERSIST", "IMAGE", "CREATED"), rows)
    return 0


def _exec(args: argparse.Namespace, ctx: Context) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError(
            "sandbox exec: give a command after the sandbox id (exec ID -- CMD)", EXIT_USAGE
        )
    request = sandbox_service_pb2.ExecRequest(
        sandbox_id=args.sandbox_id, argv=argv, workdir=args.workdir
    )
    if args.exec_timeout:
        timeout = Duration()
        timeout.FromNanoseconds(int(args.exec_timeout * 1e9))
        request.timeout.CopyFrom(timeout)
    stream = ctx.conn.sandbox.Exec(request)
    chunks: list[dict[str, Any]] = []
    exit_status: sandbox_pb2.ExecExit | None = None
    try:
        for message in stream:
            if message.HasField("exit"):
                exit_status = message.exit
            elif ctx.out.json_mode:
                chunks.append(to_dict(message.output))
            elif message.output.stream == sandbox_service_pb2.OUTPUT_STREAM_STDERR:
                sys.stderr.buffer.write(message.output.data)
                sys.stderr.buffer.flush()
            else:
                ctx.out.raw(message.output.data)
    except KeyboardInterrupt:
        stream.cancel()
        return 130
    if exit_status is None:
        raise CliError("the exec stream ended without an exit status")
    if ctx.out.json_mode:
        ctx.out.json({"output": chunks, "exit": to_dict(exit_status)})
    elif exit_status.timed_out:
        ctx.out.warn(f"timed out after {fmt_duration(exit_status.duration)}; process tree killed")
    elif exit_status.truncated:
        ctx.out.warn("output truncated")
    if exit_status.timed_out:
        return 124
    if exit_status.signal:
        return 128 + exit_status.signal
    return exit_status.exit_code


def _rm(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.sandbox.ReleaseSandbox(
        sandbox_service_pb2.ReleaseSandboxRequest(sandbox_id=args.sandbox_id, force_remove=True)
    )
    verb = "Removing" if reply.removal_scheduled else "Released (left running)"
    ctx.out.message(reply, f"{verb} sandbox {args.sandbox_id}")
    return 0


def _reap(args: argparse.Namespace, ctx: Context) -> int:
    request = sandbox_service_pb2.ReapOrphansRequest(profile=args.profile, dry_run=args.dry_run)
    if args.max_age is not None:
        max_age = Duration()
        max_age.FromNanoseconds(int(args.max_age * 1e9))
        request.max_age.CopyFrom(max_age)
    with ctx.out.progress("reaping" if not args.dry_run else "planning a reap"):
        reply = ctx.conn.sandbox.ReapOrphans(request)
    if ctx.out.json_mode:
        ctx.out.json(reply)
        return 0
    removed = "Would remove" if reply.dry_run else "Removed"
    for d in reply.removed:
        ctx.out.line(f"{removed} {d.sandbox_id[:12]} ({d.profile}/{d.task_id}): {d.reason}")
    for d in reply.spared:
        ctx.out.line(f"Spared {d.sandbox_id[:12]} ({d.profile}/{d.task_id}): {d.reason}")
    for d in reply.failed:
        ctx.out.line(f"Failed {d.sandbox_id[:12]} ({d.profile}/{d.task_id}): {d.reason}")
    age = fmt_duration(reply.max_age)
    ctx.out.line(
        f"{'Dry run: ' if reply.dry_run else ''}{len(reply.removed)} removed, "
        f"{len(reply.spared)} spared, {len(reply.failed)} failed (max age {age})"
    )
    return 1 if reply.failed else 0
