"""Longshore benchmarks: ``python -m bench [name ...]`` (what ``make bench`` runs).

A scenario module is ``bench/<name>.py`` exposing ``run(ctx: Context) -> list[Result]``;
see bench/README.md.
"""

from bench.context import Context
from bench.report import Result
from bench.timing import Stats, measure, stopwatch

__all__ = ["Context", "Result", "Stats", "measure", "stopwatch"]
