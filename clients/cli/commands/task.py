"""``longshore task create|ls|show|move|assign|block|unblock|link|unlink|logs|rm``."""

from __future__ import annotations

import argparse
import shlex
import uuid
from typing import Any

from google.protobuf.duration_pb2 import Duration
from longshore.kanban.v1 import kanban_service_pb2, task_pb2

from clients.cli.connection import paged
from clients.cli.context import Context
from clients.cli.errors import EXIT_USAGE, CliError
from clients.cli.output import enum_label, fmt_time, to_dict

STATUSES = {
    enum_label(name, "TASK_STATUS_"): value
    for name, value in task_pb2.TaskStatus.items()
    if value != task_pb2.TASK_STATUS_UNSPECIFIED
}


def status_name(value: int) -> str:
    """``TASK_STATUS_READY`` → ``ready``."""
    return enum_label(
        task_pb2.TaskStatus.Name(task_pb2.TaskStatus.ValueType(value)), "TASK_STATUS_"
    )


def register(sub: Any) -> None:
    """Add the ``task`` command group."""
    parser = sub.add_parser("task", help="tasks")
    cmds = parser.add_subparsers(dest="task_cmd", required=True, metavar="COMMAND")

    _register_create(cmds)
    _register_queries(cmds)
    _register_changes(cmds)


def _register_create(cmds: Any) -> None:
    create = cmds.add_parser("create", help="create a task")
    create.add_argument("title")
    create.add_argument("--board", default="default")
    create.add_argument("--assignee", default="", help="profile name")
    create.add_argument("--priority", type=int, default=0)
    create.add_argument("--status", choices=("triage", "todo", "ready"), default=None)
    create.add_argument("--description", default="")
    create.add_argument("--parent", action="append", default=[], help="parent task id")
    create.add_argument("--cmd", help="command line, split like a shell does")
    create.add_argument("--sh", help="shell code, run as sh -c CODE")
    create.add_argument("--image", default="")
    create.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--max-runtime", type=float, help="seconds")
    create.add_argument("--request-id", default="", help="idempotency key (default: random)")
    create.set_defaults(run=_create)


def _register_queries(cmds: Any) -> None:
    ls = cmds.add_parser("ls", help="list tasks (priority, then age)")
    ls.add_argument("--board", default="")
    ls.add_argument("--status", action="append", choices=sorted(STATUSES), default=[])
    ls.add_argument("--assignee", default="")
    ls.add_argument("--why", action="store_true", help="say why each is (not) running")
    ls.set_defaults(run=_ls)

    show = cmds.add_parser("show", help="show a task and why it is (not) running")
    show.add_argument("task_id")
    show.set_defaults(run=_show)

    logs = cmds.add_parser("logs", help="print a run's output")
    logs.add_argument("task_id")
    logs.add_argument("--run", dest="run_id", default="", help="run id (default: the latest)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    logs.set_defaults(run=_logs)


def _register_changes(cmds: Any) -> None:
    move = cmds.add_parser("move", help="move a task to another column")
    move.add_argument("task_id")
    move.add_argument("status", choices=sorted(STATUSES))
    move.add_argument("--reason", default="")
    move.set_defaults(run=_move)

    assign = cmds.add_parser("assign", help="assign a task to a profile ('-' clears)")
    assign.add_argument("task_id")
    assign.add_argument("profile")
    assign.set_defaults(run=_assign)

    block = cmds.add_parser("block", help="block a task with a reason")
    block.add_argument("task_id")
    block.add_argument("reason")
    block.set_defaults(run=_block)

    unblock = cmds.add_parser("unblock", help="unblock a task")
    unblock.add_argument("task_id")
    unblock.add_argument("--reason", default="")
    unblock.set_defaults(run=_unblock)

    link = cmds.add_parser("link", help="make CHILD wait for PARENT")
    link.add_argument("parent_id")
    link.add_argument("child_id")
    link.set_defaults(run=_link)

    unlink = cmds.add_parser("unlink", help="remove a PARENT/CHILD link")
    unlink.add_argument("parent_id")
    unlink.add_argument("child_id")
    unlink.set_defaults(run=_unlink)

    rm = cmds.add_parser("rm", help="delete a task (a running one is cancelled first)")
    rm.add_argument("task_id")
    rm.set_defaults(run=_rm)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise CliError(f"{flag} {value!r}: expected NAME=VALUE", EXIT_USAGE)
        result[name] = rest
    return result


def _command(args: argparse.Namespace) -> list[str]:
    if args.cmd and args.sh:
        raise CliError("use either --cmd or --sh, not both", EXIT_USAGE)
    if args.sh:
        return ["sh", "-c", args.sh]
    if args.cmd:
        try:
            return shlex.split(args.cmd)
        except ValueError as exc:
            raise CliError(f"--cmd: {exc}", EXIT_USAGE) from exc
    return []


def _create(args: argparse.Namespace, ctx: Context) -> int:
    task = task_pb2.Task(
        board_id=args.board,
        title=args.title,
        description=args.description,
        assignee=args.assignee,
        priority=args.priority,
        command=_command(args),
        image=args.image,
        env=_pairs(args.env, "--env"),
        labels=_pairs(args.label, "--label"),
    )
    if args.status:
        task.status = STATUSES[args.status]
    if args.max_runtime is not None:
        duration = Duration()
        duration.FromNanoseconds(int(args.max_runtime * 1e9))
        task.max_runtime.CopyFrom(duration)
    reply = ctx.conn.kanban.CreateTask(
        kanban_service_pb2.CreateTaskRequest(
            task=task,
            parent_ids=args.parent,
            request_id=args.request_id or uuid.uuid4().hex,
        )
    )
    created = reply.task
    note = " (already existed)" if reply.deduplicated else ""
    ctx.out.message(
        reply,
        f"Created task {created.task_id} on {created.board_id} "
        f"[{status_name(created.status)}]{note}",
    )
    return 0


def _ls(args: argparse.Namespace, ctx: Context) -> int:
    request = kanban_service_pb2.ListTasksRequest(
        board_id=args.board,
        statuses=[STATUSES[s] for s in args.status],
        assignee=args.assignee,
        include_readiness=args.why,
    )
    tasks = list(paged(ctx.conn.kanban.ListTasks, request, "tasks"))
    if ctx.out.json_mode:
        ctx.out.json({"tasks": [to_dict(t) for t in tasks]})
        return 0
    headers = ["TASK", "STATUS", "PRI", "ASSIGNEE", "TITLE", "UPDATED"]
    if args.why:
        headers.append("WHY")
    rows = []
    for t in tasks:
        row: list[object] = [
            t.task_id,
            status_name(t.status),
            t.priority,
            t.assignee or "-",
            t.title if len(t.title) <= 48 else t.title[:47] + "…",
            fmt_time(t.update_time),
        ]
        if args.why:
            row.append(t.readiness.message or "-")
        rows.append(row)
    ctx.out.table(headers, rows)
    return 0


def _show(args: argparse.Namespace, ctx: Context) -> int:
    task = ctx.conn.kanban.GetTask(kanban_service_pb2.GetTaskRequest(task_id=args.task_id)).task
    if ctx.out.json_mode:
        ctx.out.json(task)
        return 0
    _print_task(ctx, task)
    return 0


def _print_task(ctx: Context, task: task_pb2.Task) -> None:
    line = ctx.out.line
    line(f"task        {task.task_id}")
    line(f"title       {task.title}")
    line(f"board       {task.board_id}")
    line(f"status      {status_name(task.status)}")
    line(f"assignee    {task.assignee or '-'}")
    line(f"priority    {task.priority}")
    if task.command:
        line(f"command     {shlex.join(task.command)}")
    if task.image:
        line(f"image       {task.image}")
    if task.env:
        line(f"env         {', '.join(sorted(task.env))} (values hidden)")
    if task.parent_ids:
        line(f"parents     {', '.join(task.parent_ids)}")
    if task.blocked_reason:
        line(f"blocked     {task.blocked_reason}")
    if task.failure_count:
        line(f"failures    {task.failure_count}")
    if task.current_run_id:
        line(f"run         {task.current_run_id}")
    if task.sandbox_id:
        line(f"sandbox     {task.sandbox_id[:12]}")
    if task.readiness.message:
        line(f"why         {task.readiness.message}")
    if task.trace_id:
        line(f"trace       {task.trace_id}")
    line(f"created     {fmt_time(task.create_time)}")
    line(f"updated     {fmt_time(task.update_time)}")
    if task.description:
        line("")
        line(task.description)


def _task_reply(ctx: Context, reply: Any, verb: str) -> int:
    task = reply.task if hasattr(reply, "task") else reply.child
    ctx.out.message(reply, f"{verb} {task.task_id} [{status_name(task.status)}]")
    return 0


def _move(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.kanban.MoveTask(
        kanban_service_pb2.MoveTaskRequest(
            task_id=args.task_id, status=STATUSES[args.status], reason=args.reason
        )
    )
    return _task_reply(ctx, reply, "Moved")


def _assign(args: argparse.Namespace, ctx: Context) -> int:
    profile = "" if args.profile == "-" else args.profile
    reply = ctx.conn.kanban.AssignTask(
        kanban_service_pb2.AssignTaskRequest(task_id=args.task_id, assignee=profile)
    )
    return _task_reply(ctx, reply, f"Assigned to {profile}:" if profile else "Unassigned")


def _block(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.kanban.BlockTask(
        kanban_service_pb2.BlockTaskRequest(task_id=args.task_id, reason=args.reason)
    )
    return _task_reply(ctx, reply, "Blocked")


def _unblock(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.kanban.UnblockTask(
        kanban_service_pb2.UnblockTaskRequest(task_id=args.task_id, reason=args.reason)
    )
    return _task_reply(ctx, reply, "Unblocked")


def _link(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.kanban.LinkTasks(
        kanban_service_pb2.LinkTasksRequest(parent_id=args.parent_id, child_id=args.child_id)
    )
    return _task_reply(ctx, reply, f"Linked after {args.parent_id}:")


def _unlink(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.kanban.UnlinkTasks(
        kanban_service_pb2.UnlinkTasksRequest(parent_id=args.parent_id, child_id=args.child_id)
    )
    return _task_reply(ctx, reply, f"Unlinked from {args.parent_id}:")


def _rm(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.kanban.DeleteTask(kanban_service_pb2.DeleteTaskRequest(task_id=args.task_id))
    ctx.out.message(reply, f"Deleted task {args.task_id}")
    return 0


def _logs(args: argparse.Namespace, ctx: Context) -> int:
    request = kanban_service_pb2.StreamRunOutputRequest(
        run_id=args.run_id, task_id=args.task_id, follow=args.follow
    )
    # A follow may last as long as the run; plain reads get the usual deadline.
    timeout = None if args.follow else ctx.config.timeout
    stream = ctx.conn.kanban.StreamRunOutput(request, timeout=timeout)
    chunks: list[dict[str, Any]] = []
    try:
        for chunk in stream:
            if ctx.out.json_mode:
                chunks.append(to_dict(chunk))
            elif chunk.data:
                ctx.out.raw(chunk.data)
    except KeyboardInterrupt:
        stream.cancel()
        return 130
    if ctx.out.json_mode:
        ctx.out.json({"chunks": chunks})
    return 0
