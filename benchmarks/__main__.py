"""Run every benchmark (``make bench``): each prints a ratio against a baseline it measures in
the same run. ``python -m benchmarks vocab_map alignment`` runs only those.

Each benchmark runs in its own process so that memory peaks and caches do not leak between them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    wanted = set(argv if argv is not None else sys.argv[1:])
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if wanted:
        unknown = wanted - {n.removeprefix("bench_") for n in names}
        if unknown:
            print(f"unknown benchmarks: {sorted(unknown)}; available: "
                  f"{[n.removeprefix('bench_') for n in names]}", file=sys.stderr)
            return 2
        names = [n for n in names if n.removeprefix("bench_") in wanted]
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=HERE.parent)
        print(f"--- {name}: exit {rc}, {time.perf_counter() - start:.1f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
