"""The framing of session commands and the command relay, on fakes (no engine).

The integration tests (tests/integration/sandbox/test_sandbox_sessions.py)
run the same code against a real shell; these pin the edge cases a real
shell rarely produces: an end marker split across frames at every byte, a
marker held back then completed, output that looks like a marker, the cap.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable

import pytest

from services.sandbox.model import OutputChunk, StreamKind
from services.sandbox.sessions.command import CommandRun
from services.sandbox.sessions.deadlines import Deadlines
from services.sandbox.sessions.framing import (
    EndScanner,
    new_nonce,
    parse_ready,
    parse_status,
    prelude,
    quote,
    wrap,
)
from services.sandbox.sessions.model import SessionCommand, SessionExit


class FakeSink:
    def __init__(self, room: int = 1000) -> None:
        self.chunks: list[OutputChunk] = []
        self.exits: list[SessionExit] = []
        self.room = room

    def put(self, event: OutputChunk, *, give_up: Callable[[], bool]) -> bool:
        if len(self.chunks) >= self.room:
            return False
        self.chunks.append(event)
        return True

    def end(self, event: SessionExit) -> None:
        self.exits.append(event)


def test_a_marker_split_at_every_byte_is_found_and_nothing_else_is_lost() -> None:
    nonce = new_nonce()
    stream = b"hello\nworld " + nonce.encode() + b" 42\n"
    for cut in range(1, len(stream)):
        scanner = EndScanner(nonce)
        out = scanner.feed(stream[:cut]) + scanner.feed(stream[cut:])
        assert out == b"hello\nworld "
        assert scanner.ended and parse_status(scanner.trailer) == 42


def test_output_that_starts_like_the_marker_is_passed_on() -> None:
    nonce = new_nonce()
    scanner = EndScanner(nonce)
    looks_like = nonce[:10].encode()
    assert scanner.feed(b"x" + looks_like) == b"x"  # held back: it might be the marker
    assert scanner.feed(b"-not-it\n") == looks_like + b"-not-it\n"
    assert not scanner.ended
    assert scanner.feed(b"tail") == b"tai"  # "l" may start "ls-...": held back
    assert scanner.flush() == b"l"


def test_bytes_after_the_end_belong_to_no_command() -> None:
    nonce = new_nonce()
    scanner = EndScanner(nonce)
    assert scanner.feed(nonce.encode() + b"\nlate output") == b""
    assert scanner.ended
    assert scanner.feed(b"more") == b""


def test_ready_line_needs_the_nonce_and_a_pid() -> None:
    nonce = new_nonce()
    assert parse_ready(f"{nonce} 17".encode(), nonce) == 17
    assert parse_ready(f"{new_nonce()} 17".encode(), nonce) is None
    assert parse_ready(f"{nonce} x".encode(), nonce) is None
    assert parse_status(b"") == -1


@pytest.mark.parametrize("text", ["plain", "it's", "'", "a\nb", '$(rm -rf /) `x` \\ "q"'])
def test_quote_is_one_literal_word_for_a_real_sh(text: str) -> None:
    out = subprocess.run(
        ["sh", "-c", f"printf %s {quote(text)}"], capture_output=True, check=True
    ).stdout
    assert out == text.encode()


def test_wrapped_commands_run_in_one_shell_and_keep_state() -> None:
    """The framing against the host's own sh: state persists, both markers come, status too."""
    first, second = new_nonce(), new_nonce()
    ready = new_nonce()
    script = (
        prelude(ready)
        + wrap("cd / && export A=1; echo err >&2", marker="m1", shell_marker="s", nonce=first)
        + wrap(
            "echo $A $(pwd) $LONGSHORE_EXEC_ID; exit_with() { return $1; }; exit_with 5",
            marker="m2",
            shell_marker="s",
            nonce=second,
        )
    )
    done = subprocess.run(["sh"], input=script, capture_output=True, check=True)
    assert done.stdout.splitlines()[1:] == [
        f"{first} 0".encode(),
        b"1 / m2",
        f"{second} 5".encode(),
    ]
    assert done.stderr.splitlines() == [b"err", first.encode(), second.encode()]


def test_the_run_caps_output_and_counts_what_it_dropped() -> None:
    nonce = new_nonce()
    sink = FakeSink()
    run = CommandRun(SessionCommand("x", 10, 0), marker="m", nonce=nonce, sink=sink, max_output=5)
    assert not run.feed(1, b"abc")
    assert not run.feed(2, b"defgh")
    assert not run.feed(1, f"{nonce} 3\n".encode())
    assert run.feed(2, f"{nonce}\n".encode())
    run.complete(run.status(), session_ended=False)
    assert [(c.stream, c.data) for c in sink.chunks] == [
        (StreamKind.STDOUT, b"abc"),
        (StreamKind.STDERR, b"de"),
    ]
    (exit_,) = sink.exits
    assert (exit_.exit_code, exit_.truncated, exit_.output_bytes) == (3, True, 8)
    run.complete(0, session_ended=False)  # once only
    assert len(sink.exits) == 1


def test_a_stopped_or_ended_run_reports_minus_one() -> None:
    sink = FakeSink()
    run = CommandRun(
        SessionCommand("x", 1, 0), marker="m", nonce=new_nonce(), sink=sink, max_output=100
    )
    run.stopping = "timeout"
    run.feed(1, b"partial")
    run.complete(137, session_ended=False)
    assert (sink.exits[0].exit_code, sink.exits[0].timed_out) == (-1, True)
    ended = FakeSink()
    run = CommandRun(
        SessionCommand("x", 1, 0), marker="m", nonce=new_nonce(), sink=ended, max_output=100
    )
    run.feed(1, b"ab")  # "ab" could start no marker: passed on at once
    run.complete(0, session_ended=True)
    assert ended.exits[0].session_ended and ended.exits[0].exit_code == -1


def test_deadlines_run_in_order_and_a_cancelled_one_never_runs() -> None:
    deadlines = Deadlines()
    ran: list[str] = []
    done = threading.Event()
    cancelled = deadlines.after(0.01, lambda: ran.append("cancelled"))
    deadlines.after(0.05, lambda: (ran.append("second"), done.set()))
    deadlines.after(0.02, lambda: ran.append("first"))
    cancelled.cancel()
    assert done.wait(30)
    # The heap runs the earliest first: had the cancelled one run, it would lead.
    assert ran == ["first", "second"]
    deadlines.close()
