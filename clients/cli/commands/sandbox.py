"""``longshore sandbox ls|exec|cp|cat|rm|reap|pools`` (and the process commands
of :mod:`.sandbox_processes`: ``run|start|ps|kill``).

``ls`` lists sandboxes, or with ``SANDBOX:PATH`` a directory inside one;
``cp`` copies a file (or a local directory's files) into a sandbox or a file
out of one; ``cat`` writes a sandbox's file to stdout. ``-`` as the local side
of ``cp`` is stdin or stdout.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from google.protobuf.duration_pb2 import Duration
from longshore.sandbox.v1 import file_pb2, pool_pb2, sandbox_pb2, sandbox_service_pb2

from clients.cli.commands import sandbox_processes
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
    ls = cmds.add_parser(
        "ls", help="list sandboxes, newest first; or, given SANDBOX:PATH, a directory in one"
    )
    ls.add_argument("target", nargs="?", default="", help="SANDBOX:PATH of a directory")
    ls.add_argument("--depth", type=int, default=1, help="levels below PATH (with SANDBOX:PATH)")
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
    cp = cmds.add_parser(
        "cp", help="copy files: cp LOCAL SANDBOX:PATH (a file or a directory's files) or back"
    )
    cp.add_argument("source", help="LOCAL path, '-' (stdin) or SANDBOX:PATH")
    cp.add_argument("destination", help="SANDBOX:PATH, or LOCAL path / '-' (stdout)")
    cp.add_argument("--mode", type=lambda v: int(v, 8), default=0, help="octal mode, e.g. 755")
    cp.add_argument("--parents", action="store_true", help="create missing directories")
    cp.set_defaults(run=_cp)
    cat = cmds.add_parser("cat", help="write a file of a sandbox to stdout: cat SANDBOX:PATH")
    cat.add_argument("target", help="SANDBOX:PATH")
    cat.set_defaults(run=_cat)
    rm = cmds.add_parser("rm", help="stop and remove a sandbox")
    rm.add_argument("sandbox_id")
    rm.set_defaults(run=_rm)
    reap = cmds.add_parser("reap", help="remove old exited sandboxes")
    reap.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    reap.add_argument("--profile", default="")
    reap.add_argument("--max-age", type=float, help="seconds (default: 2 x lifetime)")
    reap.set_defaults(run=_reap)
    sandbox_processes.register(cmds)
    pools = cmds.add_parser("pools", help="warm pools: members wanted, ready, starting, why short")
    pools.add_argument("--profile", default="")
    pools.set_defaults(run=_pools)


def _ls(args: argparse.Namespace, ctx: Context) -> int:
    if args.target:
        return _ls_directory(args, ctx)
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
            b.task_id or (f"(warm pool {b.warm_pool})" if b.warm_pool else ""),
            "yes" if b.persist else "no",
            b.image,
            fmt_time(b.create_time),
            _lease(b),
        )
        for b in boxes
    ]
    ctx.out.table(
        ("SANDBOX", "STATE", "PROFILE", "TASK", "PERSIST", "IMAGE", "CREATED", "LEASE"), rows
    )
    return 0


def _lease(box: sandbox_pb2.Sandbox) -> str:
    """When the sandbox's lease ends and what happens then; ``-`` without one."""
    if not box.HasField("lease_expire_time"):
        return "-"
    action = enum_label(sandbox_pb2.LeaseExpiry.Name(box.lease_expiry), "LEASE_EXPIRY_")
    left = int((box.lease_expire_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)).total_seconds())
    if left <= 0:
        return f"due ({action})"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size:
            return f"{action} in {left // size}{unit}"
    return f"{action} in {left}s"


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
            elif message.output.stream == sandbox_pb2.OUTPUT_STREAM_STDERR:
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


def _pools(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.sandbox.ListWarmPools(pool_pb2.ListWarmPoolsRequest(profile=args.profile))
    if ctx.out.json_mode:
        ctx.out.json(reply)
        return 0
    rows = [
        (p.profile, p.size, p.ready, p.starting, p.image, p.config_hash, p.reason or "-")
        for p in reply.pools
    ]
    ctx.out.table(("PROFILE", "SIZE", "READY", "STARTING", "IMAGE", "CONFIG", "REASON"), rows)
    return 0


#: Bytes per WriteFiles data message (well under the gateway's message bound).
CHUNK_BYTES = 1024 * 1024
_TYPES = {
    file_pb2.FILE_TYPE_FILE: "-",
    file_pb2.FILE_TYPE_DIRECTORY: "d",
    file_pb2.FILE_TYPE_SYMLINK: "l",
    file_pb2.FILE_TYPE_OTHER: "?",
}


def split_remote(value: str) -> tuple[str, str] | None:
    """``(sandbox, path)`` of ``SANDBOX:/PATH``; None for a local path."""
    box, sep, path = value.partition(":")
    if not sep or not box or not path.startswith("/"):
        return None
    return box, path


def _remote(value: str, command: str) -> tuple[str, str]:
    remote = split_remote(value)
    if remote is None:
        raise CliError(f"sandbox {command}: {value!r} is not SANDBOX:/ABSOLUTE/PATH", EXIT_USAGE)
    return remote


def _ls_directory(args: argparse.Namespace, ctx: Context) -> int:
    box, path = _remote(args.target, "ls")
    request = sandbox_service_pb2.ListDirectoryRequest(sandbox_id=box, path=path, depth=args.depth)
    entries = list(paged(ctx.conn.sandbox.ListDirectory, request, "entries"))
    if ctx.out.json_mode:
        ctx.out.json({"entries": [to_dict(e) for e in entries]})
        return 0
    rows = [
        (
            _TYPES.get(e.type, "?") + stat.filemode(e.mode)[1:],
            f"{e.uid}:{e.gid}" if e.HasField("uid") else "",
            e.size,
            fmt_time(e.modify_time),
            e.path + (f" -> {e.symlink_target}" if e.symlink_target else ""),
        )
        for e in entries
    ]
    ctx.out.table(("MODE", "OWNER", "SIZE", "MODIFIED", "PATH"), rows)
    return 0


def _local_files(source: str, remote: str) -> Iterator[tuple[Path | None, str]]:
    """(local file, remote path) pairs of a copy in: one file, stdin, or a directory's files."""
    if source == "-":
        yield None, remote
        return
    root = Path(source)
    if not root.is_dir():
        yield root, remote
        return
    for directory, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            local = Path(directory) / name
            yield local, remote.rstrip("/") + "/" + local.relative_to(root).as_posix()


def _upload(
    box: str, files: list[tuple[Path | None, str]], mode: int, parents: bool
) -> Iterator[sandbox_service_pb2.WriteFilesRequest]:
    yield sandbox_service_pb2.WriteFilesRequest(sandbox_id=box)
    for local, remote in files:
        if local is None:
            # stdin has no size up front: read it whole (the header needs it).
            data = sys.stdin.buffer.read()
            yield sandbox_service_pb2.WriteFilesRequest(
                header=sandbox_service_pb2.WriteFileHeader(
                    path=remote, size=len(data), mode=mode, make_parents=parents
                )
            )
            for start in range(0, len(data), CHUNK_BYTES):
                yield sandbox_service_pb2.WriteFilesRequest(data=data[start : start + CHUNK_BYTES])
            continue
        with local.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            file_mode = mode or (os.fstat(handle.fileno()).st_mode & 0o777)
            yield sandbox_service_pb2.WriteFilesRequest(
                header=sandbox_service_pb2.WriteFileHeader(
                    path=remote, size=size, mode=file_mode, make_parents=parents
                )
            )
            sent = 0
            while sent < size and (chunk := handle.read(min(CHUNK_BYTES, size - sent))):
                sent += len(chunk)
                yield sandbox_service_pb2.WriteFilesRequest(data=chunk)


def _download(ctx: Context, box: str, path: str, out: BinaryIO) -> int:
    total = 0
    for message in ctx.conn.sandbox.ReadFile(
        sandbox_service_pb2.ReadFileRequest(sandbox_id=box, path=path)
    ):
        if message.HasField("data"):
            out.write(message.data)
            total += len(message.data)
    out.flush()
    return total


def _cp(args: argparse.Namespace, ctx: Context) -> int:
    source, destination = split_remote(args.source), split_remote(args.destination)
    if (source is None) == (destination is None):
        raise CliError(
            "sandbox cp: exactly one side must be SANDBOX:/PATH (cp LOCAL SANDBOX:/PATH or back)",
            EXIT_USAGE,
        )
    if destination is not None:
        box, remote = destination
        if args.source != "-" and not Path(args.source).exists():
            raise CliError(f"sandbox cp: {args.source}: no such file or directory", EXIT_USAGE)
        files = list(_local_files(args.source, remote))
        reply = ctx.conn.sandbox.WriteFiles(_upload(box, files, args.mode, args.parents))
        ctx.out.message(
            reply, f"Copied {len(reply.files)} file(s), {reply.bytes_written} bytes, to {box}"
        )
        return 0
    assert source is not None
    box, remote = source
    if args.destination == "-":
        _download(ctx, box, remote, sys.stdout.buffer)
        return 0
    target = Path(args.destination)
    if target.is_dir():
        target = target / remote.rsplit("/", 1)[-1]
    partial = target.with_name(target.name + ".part")
    try:
        with partial.open("wb") as handle:
            total = _download(ctx, box, remote, handle)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    if not ctx.out.json_mode:
        ctx.out.warn(f"Copied {total} bytes to {target}")
    else:
        ctx.out.json({"path": str(target), "bytes": total})
    return 0


def _cat(args: argparse.Namespace, ctx: Context) -> int:
    box, path = _remote(args.target, "cat")
    _download(ctx, box, path, sys.stdout.buffer)
    return 0
