"""Checks of process requests: bounds and the field each refusal names."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import process_pb2

from services.runtime.errors import InvalidArgument, OutOfRange, ServiceError
from services.sandbox.processes import checks
from services.sandbox.processes.records import PtySize


def refusal(call: object, *args: object) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        call(*args)  # type: ignore[operator]
    return info.value


def test_a_good_config_becomes_the_domain_record() -> None:
    config = checks.config_from_proto(
        process_pb2.ProcessConfig(
            argv=["sh", "-c", "true"],
            env={"A": "1"},
            tag="build.1",
            pty=process_pb2.PtySize(rows=24, columns=80),
            timeout=duration_pb2.Duration(seconds=5),
            stdin=True,
        )
    )
    assert config.argv == ("sh", "-c", "true") and config.env == {"A": "1"}
    assert config.pty == PtySize(24, 80) and config.timeout_seconds == 5 and config.stdin


@pytest.mark.parametrize(
    ("config", "needle", "kind"),
    [
        (process_pb2.ProcessConfig(), "config.argv: required", InvalidArgument),
        (process_pb2.ProcessConfig(argv=[""]), "config.argv: required", InvalidArgument),
        (process_pb2.ProcessConfig(argv=["x"] * 4097), "at most 4096", InvalidArgument),
        (process_pb2.ProcessConfig(argv=["x" * (1024 * 1024)]), "bytes", InvalidArgument),
        (process_pb2.ProcessConfig(argv=["a\0"]), "NUL", InvalidArgument),
        (process_pb2.ProcessConfig(argv=["x"], env={"A-B": "1"}), "config.env", InvalidArgument),
        (
            process_pb2.ProcessConfig(argv=["x"], env={"LONGSHORE_EXEC_ID": "1"}),
            "reserved",
            InvalidArgument,
        ),
        (process_pb2.ProcessConfig(argv=["x"], tag="_x"), "config.tag", InvalidArgument),
        (process_pb2.ProcessConfig(argv=["x"], workdir="a\0"), "workdir", InvalidArgument),
        (process_pb2.ProcessConfig(argv=["x"], user="u" * 300), "config.user", InvalidArgument),
        (
            process_pb2.ProcessConfig(argv=["x"], pty=process_pb2.PtySize(rows=1, columns=0)),
            "config.pty.columns",
            InvalidArgument,
        ),
        (
            process_pb2.ProcessConfig(argv=["x"], timeout=duration_pb2.Duration(seconds=-1)),
            "config.timeout",
            InvalidArgument,
        ),
        (
            process_pb2.ProcessConfig(argv=["x"], timeout=duration_pb2.Duration(seconds=10**6)),
            "config.timeout",
            OutOfRange,
        ),
        # Beyond timedelta's range (found by a random-seed fuzz run: it was INTERNAL).
        (
            process_pb2.ProcessConfig(
                argv=["x"], timeout=duration_pb2.Duration(seconds=-(2**62), nanos=1)
            ),
            "config.timeout",
            InvalidArgument,
        ),
        (
            process_pb2.ProcessConfig(argv=["x"], timeout=duration_pb2.Duration(seconds=2**62)),
            "config.timeout",
            OutOfRange,
        ),
        (
            process_pb2.ProcessConfig(
                argv=["x"], timeout=duration_pb2.Duration(seconds=1, nanos=10**9)
            ),
            "config.timeout",
            InvalidArgument,
        ),
    ],
)
def test_a_bad_config_is_refused_naming_the_field(
    config: process_pb2.ProcessConfig, needle: str, kind: type[ServiceError]
) -> None:
    error = refusal(checks.config_from_proto, config)
    assert isinstance(error, kind) and needle in error.message


def test_selectors_signals_offsets_and_input_are_bounded() -> None:
    assert checks.selector(process_pb2.ProcessSelector(pid=7)) == ("pid", 7)
    assert checks.selector(process_pb2.ProcessSelector(tag="a")) == ("tag", "a")
    assert "process: required" in refusal(checks.selector, process_pb2.ProcessSelector()).message
    long_id = process_pb2.ProcessSelector(process_id="p" * 65)
    assert "at most 64" in refusal(checks.selector, long_id).message
    assert "pid" in refusal(checks.selector, process_pb2.ProcessSelector(pid=0)).message
    assert checks.signal_number(64) == 64
    assert "1 to 64" in refusal(checks.signal_number, 0).message
    assert "from_offset" in refusal(checks.from_offset, -1).message
    assert "at most 1048576" in refusal(checks.input_data, b"x" * (1024 * 1024 + 1), "data").message
