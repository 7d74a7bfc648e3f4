"""The benchmark runner: timing, results, discovery and the files it writes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bench.__main__ import discover, main
from bench.report import Result, markdown_table
from bench.timing import Stats, measure, stopwatch


def test_stats_median_p90_min() -> None:
    stats = Stats.from_samples([float(x) for x in range(1, 11)])
    assert (stats.median, stats.p90, stats.min, stats.max, stats.n) == (5.5, 9.0, 1.0, 10.0, 10)
    with pytest.raises(ValueError, match="no samples"):
        Stats.from_samples([])


def test_measure_counts_calls_and_runs_setup_untimed() -> None:
    calls: list[str] = []
    stats = measure(lambda: calls.append("fn"), repeat=5, warmup=2, setup=lambda: calls.append("s"))
    assert stats.n == 5
    assert calls == ["s", "fn"] * 7
    assert 0 <= stats.min <= stats.median <= stats.p90
    samples: list[float] = []
    with stopwatch(samples):
        pass
    assert len(samples) == 1 and samples[0] >= 0


def test_result_from_stats_decides_met_from_limits() -> None:
    ours, raw = Stats.from_samples([12.0]), Stats.from_samples([10.0])
    ok = Result.from_stats("reuse", ours, raw, target="<= 1.5x raw", max_ratio=1.5)
    assert ok.met and ok.ratio == pytest.approx(1.2) and ok.raw_ms == 10.0
    assert not Result.from_stats("reuse", ours, raw, target="<= 1.1x raw", max_ratio=1.1).met
    assert not Result.from_stats("cold", ours, target="< 10 ms", max_ms=10).met
    assert Result.from_stats("cold", ours, target="info", met=True).ratio is None
    table = markdown_table("demo", [ok])
    assert "| reuse | 12.0 | 10.0 | 1.20x | <= 1.5x raw | yes | 1 |" in table


@pytest.fixture
def fake_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    package = tmp_path / "fakebench_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "timing.py").write_text("def run(ctx):\n    raise AssertionError('runner module')\n")
    (package / "notes.py").write_text("VALUE = 1\n")
    (package / "fast.py").write_text(
        textwrap.dedent(
            """
            from bench import Result, Stats, measure

            def run(ctx):
                ours = measure(lambda: None, repeat=ctx.repeat(10), warmup=1)
                raw = Stats.from_samples([1.0])
                return [
                    Result.from_stats("noop", ours, raw, target="<= 1x raw", max_ratio=1.0),
                    Result("missed", 5.0, None, "< 1 ms", False, 1, {"note": "x"}),
                ]
            """
        )
    )
    (package / "broken.py").write_text("def run(ctx):\n    raise RuntimeError('engine gone')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fakebench_pkg"


def test_discover_finds_modules_with_run_only(fake_bench: str) -> None:
    assert sorted(discover(fake_bench)) == ["broken", "fast"]


def test_main_writes_json_and_markdown(
    fake_bench: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    assert main(["fast", "--quick", "--results-dir", str(out)], package=fake_bench) == 0
    document = json.loads((out / "fast.json").read_text())
    assert document["bench"] == "fast" and document["error"] is None
    noop, missed = document["results"]
    assert noop["scenario"] == "noop" and noop["samples"] == 3 and noop["met"] is True
    assert noop["ratio"] < 1 and noop["raw_ms"] == 1.0
    assert missed == {
        "scenario": "missed",
        "ours_ms": 5.0,
        "raw_ms": None,
        "target": "< 1 ms",
        "met": False,
        "samples": 1,
        "extra": {"note": "x"},
        "ratio": None,
    }
    assert "| missed | 5.00 | - | - | < 1 ms | **no** | 1 |" in (out / "fast.md").read_text()
    assert "## bench: fast" in capsys.readouterr().out
    assert not (out / "broken.json").exists()
    # --strict turns a missed target into a failing exit status.
    assert main(["fast", "--strict", "--results-dir", str(out)], package=fake_bench) == 1


def test_main_records_a_failing_scenario_and_keeps_going(fake_bench: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert main(["--results-dir", str(out)], package=fake_bench) == 1
    assert json.loads((out / "broken.json").read_text())["error"] == "RuntimeError: engine gone"
    assert (out / "fast.json").exists()


def test_main_rejects_unknown_names(fake_bench: str) -> None:
    with pytest.raises(SystemExit):
        main(["nope"], package=fake_bench)
