"""``longshore sandbox run|start|ps|kill``: processes in a sandbox.

``run`` is interactive (RunProcess): the terminal's or pipe's stdin goes to
the process, its output comes back, and its exit code is the CLI's exit
status; ``--tty`` gives it a terminal of the local one's size (raw mode,
resized with the window). Options go before the sandbox: what follows it is
the command. ``start`` starts a background process and prints
its id; ``ps`` lists a sandbox's processes; ``kill`` signals one, named by
id, pid or tag.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from google.protobuf.duration_pb2 import Duration
from longshore.sandbox.v1 import process_pb2, sandbox_pb2

from clients.cli.context import Context
from clients.cli.errors import EXIT_USAGE, CliError
from clients.cli.output import enum_label, fmt_duration, fmt_time, to_dict

#: Bytes read from stdin per message (the manager takes at most 1 MiB).
STDIN_CHUNK = 64 * 1024


def register(cmds: Any) -> None:
    """Add ``run``, ``start``, ``ps`` and ``kill`` to the ``sandbox`` group."""
    run = cmds.add_parser(
        "run", help="run a process interactively: run [--tty] SANDBOX -- CMD ARGS..."
    )
    run.add_argument("sandbox_id")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="command and arguments")
    run.add_argument("--tty", action="store_true", help="give the process a terminal")
    run.add_argument("--kill-after", dest="kill_after", type=float, help="kill after N seconds")
    run.add_argument("--workdir", default="")
    run.set_defaults(run=_run)
    start = cmds.add_parser(
        "start", help="start a background process: start [--tag T] SANDBOX -- CMD ARGS..."
    )
    start.add_argument("sandbox_id")
    start.add_argument("argv", nargs=argparse.REMAINDER, help="command and arguments")
    start.add_argument("--tag", default="", help="a name to find it by")
    start.add_argument("--kill-after", dest="kill_after", type=float, help="kill after N seconds")
    start.add_argument("--workdir", default="")
    start.set_defaults(run=_start)
    ps = cmds.add_parser("ps", help="list a sandbox's processes, newest first")
    ps.add_argument("sandbox_id")
    ps.add_argument("--all", action="store_true", help="include exited processes")
    ps.set_defaults(run=_ps)
    kill = cmds.add_parser("kill", help="signal a process: kill SANDBOX PROCESS (id, pid or tag)")
    kill.add_argument("sandbox_id")
    kill.add_argument("process", help="process id (proc-...), pid or tag")
    kill.add_argument("--signal", type=int, default=15, help="signal number (default 15)")
    kill.set_defaults(run=_kill)


def _argv(args: argparse.Namespace, command: str) -> list[str]:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError(
            f"sandbox {command}: give a command after the sandbox id ({command} ID -- CMD)",
            EXIT_USAGE,
        )
    return argv


def _config(args: argparse.Namespace, command: str) -> process_pb2.ProcessConfig:
    config = process_pb2.ProcessConfig(argv=_argv(args, command), workdir=args.workdir)
    if args.kill_after:
        timeout = Duration()
        timeout.FromNanoseconds(int(args.kill_after * 1e9))
        config.timeout.CopyFrom(timeout)
    return config


def selector(value: str) -> process_pb2.ProcessSelector:
    """A process named on the command line: ``proc-...`` is an id, digits a pid, else a tag."""
    if value.startswith("proc-"):
        return process_pb2.ProcessSelector(process_id=value)
    if value.isdigit():
        return process_pb2.ProcessSelector(pid=int(value))
    return process_pb2.ProcessSelector(tag=value)


def _terminal_size() -> process_pb2.PtySize:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return process_pb2.PtySize(rows=24, columns=80)
    return process_pb2.PtySize(rows=max(1, size.lines), columns=max(1, size.columns))


class _Requests:
    """The RunProcess request stream: the start, then stdin and resizes as they come."""

    def __init__(self, first: process_pb2.RunProcessRequest) -> None:
        self._queue: queue.Queue[process_pb2.RunProcessRequest | None] = queue.Queue(maxsize=16)
        self._queue.put(first)

    def __iter__(self) -> Iterator[process_pb2.RunProcessRequest]:
        return iter(self._queue.get, None)

    def resize(self) -> None:
        """From the SIGWINCH handler: never blocks (a full queue drops this resize)."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(process_pb2.RunProcessRequest(resize=_terminal_size()))

    def pump_stdin(self) -> None:
        """In a thread: stdin to the process until EOF, then close its stdin."""
        stream = sys.stdin.buffer
        while data := stream.read1(STDIN_CHUNK):
            self._queue.put(process_pb2.RunProcessRequest(stdin=data))
        self._queue.put(process_pb2.RunProcessRequest(close_stdin=process_pb2.CloseStdin()))


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    """The local terminal in raw mode (keys go to the remote one as typed), restored after."""
    if not enabled or not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _run(args: argparse.Namespace, ctx: Context) -> int:
    config = _config(args, "run")
    config.stdin = True
    if args.tty:
        config.pty.CopyFrom(_terminal_size())
    start = process_pb2.RunProcessStart(sandbox_id=args.sandbox_id, config=config)
    requests = _Requests(process_pb2.RunProcessRequest(start=start))
    if args.tty and hasattr(signal, "SIGWINCH"):
        signal.signal(signal.SIGWINCH, lambda *_: requests.resize())
    # A daemon thread: a process that exits before its input ends ends the CLI.
    threading.Thread(target=requests.pump_stdin, daemon=True).start()
    call = ctx.conn.sandbox.RunProcess(iter(requests))
    chunks: list[dict[str, Any]] = []
    end: process_pb2.ProcessExit | None = None
    try:
        with _raw_terminal(args.tty):
            for reply in call:
                event = reply.event
                if event.HasField("exit"):
                    end = event.exit
                elif not event.HasField("output"):
                    continue
                elif ctx.out.json_mode:
                    chunks.append(to_dict(event.output))
                elif event.output.chunk.stream == sandbox_pb2.OUTPUT_STREAM_STDERR:
                    sys.stderr.buffer.write(event.output.chunk.data)
                    sys.stderr.buffer.flush()
                else:
                    ctx.out.raw(event.output.chunk.data)
    except KeyboardInterrupt:
        call.cancel()  # the manager kills the process
        return 130
    if end is None:
        raise CliError("the process stream ended without an exit status")
    return _report_exit(ctx, end, chunks)


def _report_exit(ctx: Context, end: process_pb2.ProcessExit, chunks: list[dict[str, Any]]) -> int:
    if ctx.out.json_mode:
        ctx.out.json({"output": chunks, "exit": to_dict(end)})
    elif end.timed_out:
        ctx.out.warn(f"timed out after {fmt_duration(end.duration)}; process tree killed")
    elif end.reason:
        ctx.out.warn(end.reason)
    if end.timed_out:
        return 124
    if end.signal:
        return 128 + end.signal
    return end.exit_code


def _start(args: argparse.Namespace, ctx: Context) -> int:
    config = _config(args, "start")
    config.tag = args.tag
    reply = ctx.conn.sandbox.StartProcess(
        process_pb2.StartProcessRequest(sandbox_id=args.sandbox_id, config=config)
    )
    process = reply.process
    ctx.out.message(reply, f"Started {process.process_id} (pid {process.pid})")
    return 0


def _ps(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.sandbox.ListProcesses(
        process_pb2.ListProcessesRequest(sandbox_id=args.sandbox_id, include_exited=args.all)
    )
    if ctx.out.json_mode:
        ctx.out.json({"processes": [to_dict(p) for p in reply.processes]})
        return 0
    rows = [
        (
            p.process_id,
            p.pid,
            p.tag or "-",
            enum_label(process_pb2.ProcessState.Name(p.state), "PROCESS_STATE_"),
            _exit_text(p),
            fmt_time(p.start_time),
            " ".join(p.argv)[:60],
        )
        for p in reply.processes
    ]
    ctx.out.table(("PROCESS", "PID", "TAG", "STATE", "EXIT", "STARTED", "COMMAND"), rows)
    return 0


def _exit_text(process: process_pb2.Process) -> str:
    if process.state != process_pb2.PROCESS_STATE_EXITED:
        return "-"
    if process.exit.timed_out:
        return "timed out"
    if process.exit.signal:
        return f"signal {process.exit.signal}"
    return str(process.exit.exit_code)


def _kill(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.sandbox.SignalProcess(
        process_pb2.SignalProcessRequest(
            sandbox_id=args.sandbox_id, process=selector(args.process), signal=args.signal
        )
    )
    ctx.out.message(reply, f"Sent signal {args.signal} to {args.process}")
    return 0
