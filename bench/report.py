"""Benchmark results: the ``Result`` record and the JSON / Markdown writers."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.timing import Stats


@dataclass(frozen=True)
class Result:
    """One scenario's outcome: Longshore's median against the raw baseline.

    Attributes:
        scenario: Short name, e.g. ``"acquire: reuse running"``.
        ours_ms: Longshore's median in milliseconds.
        raw_ms: The baseline's median (raw Docker API, the anchor's code...), if any.
        target: The target in words, e.g. ``"<= 1.5x raw"`` or ``"< 100 ms"``.
        met: Whether the target was met.
        samples: How many timed samples ``ours_ms`` summarises.
        extra: Anything else worth keeping (p90s, counts, notes); JSON-serialisable.
    """

    scenario: str
    ours_ms: float
    raw_ms: float | None
    target: str
    met: bool
    samples: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """``ours_ms / raw_ms``, when there is a baseline."""
        if self.raw_ms is None or self.raw_ms <= 0:
            return None
        return self.ours_ms / self.raw_ms

    @classmethod
    def from_stats(
        cls,
        scenario: str,
        ours: Stats,
        raw: Stats | None = None,
        *,
        target: str,
        max_ratio: float | None = None,
        max_ms: float | None = None,
        met: bool | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Result:
        """Build a result from timing stats, deciding ``met`` from the limits given.

        ``met`` is the explicit value when passed, else true when every limit
        given holds (``ours/raw <= max_ratio``, ``ours <= max_ms``).
        """
        info = {"ours_p90_ms": round(ours.p90, 3), **(extra or {})}
        if raw is not None:
            info["raw_p90_ms"] = round(raw.p90, 3)
        if met is None:
            met = True
            if max_ratio is not None:
                met = raw is not None and ours.median <= max_ratio * raw.median
            if max_ms is not None:
                met = met and ours.median <= max_ms
        return cls(
            scenario=scenario,
            ours_ms=ours.median,
            raw_ms=None if raw is None else raw.median,
            target=target,
            met=met,
            samples=ours.n,
            extra=info,
        )

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (``ratio`` included)."""
        return {**asdict(self), "ratio": self.ratio}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def markdown_table(name: str, results: Sequence[Result], error: str | None = None) -> str:
    """Render results as a Markdown table with a heading."""
    lines = [
        f"## bench: {name}",
        "",
        "| scenario | ours (ms) | raw (ms) | ratio | target | met | n |",
        "|---|---:|---:|---:|---|:-:|---:|",
    ]
    for r in results:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        met = "yes" if r.met else "**no**"
        row = (r.scenario, _ms(r.ours_ms), _ms(r.raw_ms), ratio, r.target, met, str(r.samples))
        lines.append("| " + " | ".join(row) + " |")
    if error:
        lines += ["", f"**error:** `{error}`"]
    return "\n".join(lines) + "\n"


def write_results(
    results_dir: Path,
    name: str,
    results: Sequence[Result],
    *,
    run_id: str,
    duration_s: float,
    error: str | None = None,
) -> str:
    """Write ``<name>.json`` and ``<name>.md`` under ``results_dir``; return the table."""
    results_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "bench": name,
        "run_id": run_id,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(duration_s, 2),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "error": error,
        "results": [r.to_json() for r in results],
    }
    table = markdown_table(name, results, error)
    for suffix, text in (("json", json.dumps(document, indent=2) + "\n"), ("md", table)):
        tmp = results_dir / f"{name}.{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(results_dir / f"{name}.{suffix}")
    return table
