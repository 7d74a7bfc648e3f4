"""The line a spare reads: every word arrives literally, under dash, bash and busybox sh.

The wrapper and the line run in the local shells exactly as a spare runs them
in a sandbox (``sh -c WRAPPER NAME``, the line then more stdin on a pipe);
requests a spare cannot serve as the normal path does get no line.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from services.sandbox.processes.records import ProcessConfig, PtySize
from services.sandbox.processes.spare_line import (
    LINE_VAR,
    MAX_LINE_BYTES,
    NL_VAR,
    SPARE_WRAPPER,
    quote,
    spare_line,
)

SHELLS = [
    pytest.param(["dash"], id="dash"),
    pytest.param(["bash"], id="bash"),
    pytest.param(["busybox", "sh"], id="busybox"),
]
NASTY = ["it's", "a b", "one\ntwo\n", "$(echo no)", "`echo no`", '"q"', "\\", "", "'", "-n", "*"]


def run(
    shell: list[str], config: ProcessConfig, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} is not installed")
    line = spare_line(config)
    assert line is not None
    return subprocess.run(
        [*shell, "-c", SPARE_WRAPPER, "longshore-process"],
        input=line + stdin,
        capture_output=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=False,
    )


@pytest.mark.parametrize("shell", SHELLS)
def test_argv_env_and_workdir_arrive_literally_and_stdin_goes_on(
    shell: list[str], tmp_path: object
) -> None:
    script = 'printf "[%s]" "$@"; printf "{%s}{%s}{%s}" "$K" "$PWD" "${LONGSHORE_NL-unset}"; cat'
    config = ProcessConfig(
        argv=("sh", "-c", script, "zero", *NASTY),
        env={"K": 'v\'\n$(echo no) `x` "y"'},
        workdir=str(tmp_path),
    )
    done = run(shell, config, stdin=b"the rest\nof stdin")
    pid, _, output = done.stdout.partition(b"\n")
    assert pid.isdigit() and done.returncode == 0, done.stderr
    words = "".join(f"[{w}]" for w in NASTY)
    # The wrapper's variables are not exported: the program sees neither.
    expected = f"{words}{{{config.env['K']}}}{{{tmp_path}}}{{unset}}the rest\nof stdin"
    assert output.decode() == expected


@pytest.mark.parametrize("shell", SHELLS)
def test_a_missing_workdir_exits_126_silently_and_a_missing_program_127(
    shell: list[str],
) -> None:
    gone = run(shell, ProcessConfig(argv=("true",), workdir="/no/such/dir"))
    assert (gone.returncode, gone.stdout.count(b"\n"), gone.stderr) == (126, 1, b"")
    missing = run(shell, ProcessConfig(argv=("no-such-program-x",)))
    assert missing.returncode == 127 and b"no-such-program-x" in missing.stderr


def test_quote_keeps_quotes_and_writes_newlines_as_the_variable() -> None:
    assert quote("it's") == "'it'\\''s'"
    assert quote("a\nb") == f"'a'\"${NL_VAR}\"'b'"
    assert quote("") == "''"


def test_the_line_is_one_line() -> None:
    line = spare_line(ProcessConfig(argv=("echo", "a\nb\nc"), env={"K": "x\ny"}, workdir="/t\nu"))
    assert line is not None and line.count(b"\n") == 1 and line.endswith(b"\n")


@pytest.mark.parametrize(
    "config",
    [
        ProcessConfig(argv=("true",), pty=PtySize(24, 80)),
        ProcessConfig(argv=("true",), user="nobody"),
        ProcessConfig(argv=("true",), workdir="relative"),
        ProcessConfig(argv=("true",), env={NL_VAR: "x"}),
        ProcessConfig(argv=("true",), env={LINE_VAR: "x"}),
        ProcessConfig(argv=("echo", "x" * MAX_LINE_BYTES)),
    ],
    ids=["pty", "user", "relative-workdir", "nl-var", "line-var", "too-long"],
)
def test_what_a_spare_cannot_serve_gets_no_line(config: ProcessConfig) -> None:
    assert spare_line(config) is None
