"""Run every `benchmarks/bench_*.py` (or those named on the command line).

Each module has `run() -> dict[str, float | int | str]`; its figures are printed as a table and
written to `benchmarks/results/<name>.json`. Both sides of every comparison run in the same
process, and ratios are printed, because absolute times on shared machines mean little.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
from pathlib import Path

import benchmarks

RESULTS = Path(__file__).parent / "results"


def discover() -> list[str]:
    """Every `bench_*` module, but those that set `RUN_BY_DEFAULT = False` (run them by name)."""
    names = sorted(
        module.name
        for module in pkgutil.iter_modules(benchmarks.__path__)
        if module.name.startswith("bench_")
    )
    return [
        name
        for name in names
        if getattr(importlib.import_module(f"benchmarks.{name}"), "RUN_BY_DEFAULT", True)
    ]


def print_table(name: str, figures: dict) -> None:
    print(f"\n== {name}")
    width = max(len(key) for key in figures)
    for key, value in figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {key.ljust(width)}  {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    names = parser.parse_args().names or discover()
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        figures = module.run()
        print_table(name, figures)
        (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
