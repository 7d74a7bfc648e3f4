"""``longshore sandbox shell SANDBOX``: an interactive shell session in a sandbox.

Each line read from stdin runs in one session (OpenSession, then
RunSessionCommand per line), so ``cd``, ``export`` and functions carry over;
output streams as it comes; a command that fails prints its status on
stderr. Ctrl-C stops the running command (its process tree), not the
session; end of input (Ctrl-D) closes it. With ``--json`` each command is
one JSON object on stdout. The exit status is the last command's.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from google.protobuf.duration_pb2 import Duration
from longshore.sandbox.v1 import sandbox_pb2, session_pb2

from clients.cli.context import Context
from clients.cli.errors import CliError
from clients.cli.output import to_dict


def register(cmds: Any) -> None:
    """Add ``sandbox shell`` to the ``sandbox`` group's subcommands."""
    shell = cmds.add_parser(
        "shell", help="an interactive shell session in a sandbox (state persists per line)"
    )
    shell.add_argument("sandbox_id")
    shell.add_argument("--shell", default="", help="shell program (default /bin/sh)")
    shell.add_argument("--workdir", default="", help="starting directory")
    shell.add_argument(
        "--kill-after", dest="command_timeout", type=float, help="stop a command after N seconds"
    )
    shell.set_defaults(run=_shell)


def _shell(args: argparse.Namespace, ctx: Context) -> int:
    stub = ctx.conn.sandbox
    session = stub.OpenSession(
        session_pb2.OpenSessionRequest(
            sandbox_id=args.sandbox_id, shell=args.shell, workdir=args.workdir
        )
    ).session
    prompt = sys.stdin.isatty() and not ctx.out.json_mode
    if prompt:
        ctx.out.warn(f"session {session.session_id} in {session.sandbox_id[:12]}; Ctrl-D ends it")
    status = 0
    try:
        while True:
            if prompt:
                sys.stderr.write(f"{session.sandbox_id[:12]}$ ")
                sys.stderr.flush()
            line = sys.stdin.readline()
            if not line:
                break
            command = line.rstrip("\n")
            if not command.strip():
                continue
            exit_status = _run(ctx, session, command, args.command_timeout)
            if exit_status is None:  # interrupted: the command was stopped
                status = 130
                continue
            status = _report(ctx, exit_status)
            if exit_status.session_ended:
                ctx.out.warn("the session's shell ended")
                return status
    finally:
        stub.CloseSession(
            session_pb2.CloseSessionRequest(
                sandbox_id=session.sandbox_id, session_id=session.session_id
            )
        )
    return status


def _run(
    ctx: Context, session: session_pb2.Session, command: str, timeout: float | None
) -> session_pb2.SessionCommandExit | None:
    """Runs one line; output streams to stdout/stderr (or is collected for --json)."""
    request = session_pb2.RunSessionCommandRequest(
        sandbox_id=session.sandbox_id, session_id=session.session_id, command=command
    )
    if timeout:
        duration = Duration()
        duration.FromNanoseconds(int(timeout * 1e9))
        request.timeout.CopyFrom(duration)
    stream = ctx.conn.sandbox.RunSessionCommand(request)
    chunks: list[dict[str, Any]] = []
    exit_status: session_pb2.SessionCommandExit | None = None
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
        stream.cancel()  # the manager stops the command; the session stays
        ctx.out.warn("^C: command stopped")
        return None
    if exit_status is None:
        raise CliError("the session command's stream ended without an exit status")
    if ctx.out.json_mode:
        ctx.out.json({"command": command, "output": chunks, "exit": to_dict(exit_status)})
    return exit_status


def _report(ctx: Context, exit_status: session_pb2.SessionCommandExit) -> int:
    """Says on stderr how a command ended unless it succeeded; its status for the CLI."""
    if exit_status.timed_out:
        ctx.out.warn("[timed out: the command's process tree was stopped]")
        return 124
    if exit_status.truncated:
        ctx.out.warn("[output truncated]")
    if exit_status.exit_code != 0 and not exit_status.session_ended:
        ctx.out.warn(f"[exit {exit_status.exit_code}]")
    return exit_status.exit_code & 0xFF if exit_status.exit_code >= 0 else 1
