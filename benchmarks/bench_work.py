"""Work ratio per step of a federation: tokens its models processed ÷ the algorithm's floor.

Runs a federation end to end with ``fedmkt run`` (the embedded services, FedMKT + baseline run)
and prints the report's model-work table: per step and participant, the tokens run forward and
backward against the floor (each sample once per pass; padding, a recomputed pass or a prompt
re-run per choice count against it) and the LM-head positions against the rows whose logits
are read. Target: every step's token ratio ≤ 1.10. Default: the default example with one round
(``--rounds``). Run: ``python -m benchmarks.bench_work [--config examples/heterogeneous.yaml]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from fedmkt.federation.work_report import TARGET, totals

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_work", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "heterogeneous.yaml")
    parser.add_argument("--rounds", type=int, default=1, help="rounds to run (0: the config's)")
    args = parser.parse_args(argv)

    from services.embedded import EmbeddedRun

    data = yaml.safe_load(args.config.read_text())
    if args.rounds:
        data["rounds"] = args.rounds
    with tempfile.TemporaryDirectory(prefix="bench-work-") as tmp:
        config = Path(tmp) / "federation.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        print(f"== bench_work: {args.config.name}, {data['rounds']} round(s), "
              f"FedMKT + baseline run ==", flush=True)
        summary = EmbeddedRun(config, runs_dir=Path(tmp) / "runs", view=False).run()
    worst = 0.0
    for kind, rows in summary["work"].items():
        if not rows:
            continue
        print(f"\n{kind} run: step / participant: tokens (fwd+bwd) done / floor = ratio; "
              "LM-head positions done / floor = ratio")
        for r in rows:
            done = r["work/forward_tokens"] + r["work/backward_tokens"]
            floor = r["floor/forward_tokens"] + r["floor/backward_tokens"]
            worst = max(worst, r["ratio"])
            print(f"  {r['step']:<17} {r['participant']:<15} {done:>9,} / {floor:>9,} = "
                  f"{r['ratio']:.3f}; head {r['work/head_positions']:>7,} / "
                  f"{r['floor/head_positions']:>7,} = {r['head_ratio']:.3f}")
        total = totals(rows)
        print(f"  all: {total['ratio']:.3f} (tokens), {total['head_ratio']:.3f} (LM head)")
    met = worst <= TARGET
    print(f"\nworst step ratio {worst:.3f} (target <= {TARGET}: {'met' if met else 'NOT met'})")
    return 0 if summary["state"] == "succeeded" and met else 1


if __name__ == "__main__":
    raise SystemExit(main())
