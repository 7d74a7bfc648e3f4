"""``python -m bench [name ...]``: run benchmark scenarios and write bench/results/."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from bench.context import Context
from bench.report import Result, write_results

#: Modules of the runner itself, never scenarios.
RUNNER_MODULES = frozenset({"context", "report", "timing"})

Scenario = Callable[[Context], list[Result]]


def discover(package: str = "bench") -> dict[str, Scenario]:
    """Find ``<package>.<name>`` modules exposing a callable ``run``, by name."""
    pkg = importlib.import_module(package)
    found: dict[str, Scenario] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name in RUNNER_MODULES or info.ispkg:
            continue
        module: ModuleType = importlib.import_module(f"{package}.{info.name}")
        run = getattr(module, "run", None)
        if callable(run):
            found[info.name] = run
    return found


def main(argv: Sequence[str] | None = None, package: str = "bench") -> int:
    """Run the named scenarios (all when none are named); return the exit status.

    The status is 1 when a scenario raised, or (with ``--strict``) missed a
    target; results are written either way.
    """
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help="scenario modules to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list scenario modules and exit")
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    scenarios = discover(package)
    if args.list:
        print("\n".join(sorted(scenarios)) or "(no scenarios)")
        return 0
    unknown = sorted(set(args.names) - set(scenarios))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; have {sorted(scenarios)}")
    names = args.names or sorted(scenarios)
    if not names:
        print("no benchmark scenarios found under bench/", file=sys.stderr)
        return 0

    ctx = Context(results_dir=args.results_dir, quick=args.quick, log_dir=args.results_dir / "logs")
    status = 0
    try:
        for name in names:
            started = time.monotonic()
            results: list[Result] = []
            error = None
            try:
                results = list(scenarios[name](ctx))
            except Exception as exc:
                traceback.print_exc()
                error = f"{type(exc).__name__}: {exc}"
                status = 1
            table = write_results(
                args.results_dir,
                name,
                results,
                run_id=ctx.run_id,
                duration_s=time.monotonic() - started,
                error=error,
            )
            print(table)
            if args.strict and not all(r.met for r in results):
                status = 1
    finally:
        ctx.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
