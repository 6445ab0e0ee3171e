"""MinED vocabulary map, mistral (32,000) → gpt2 (50,257): ours vs the reference brute force.

Ours: ``build_vocab_map`` on the full vocabularies, cold (no cache; canonical strings are
computed before the clock starts and timed separately). Baseline: the reference algorithm, one
``editdistance.eval`` call per (source, target) pair, run on a random sample of source tokens
against all targets and extrapolated to 32,000 rows; the sampled rows must equal our map.
Run: ``python -m benchmarks.bench_vocab_map [--sample 40] [--mode surface] [--workers -1]``.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

from fedmkt.align.canonical import CanonicalMode, canonical_vocab
from fedmkt.align.vocab_map import brute_force_vocab_map, build_vocab_map
from fedmkt.models.tokenizers import load_tokenizer

TARGET_SECONDS = 5.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_vocab_map",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--source", default="mistral")
    parser.add_argument("--target", default="gpt2")
    parser.add_argument("--mode", default="surface", choices=[m.value for m in CanonicalMode])
    parser.add_argument("--sample", type=int, default=40,
                        help="source tokens timed with the brute force (default 40)")
    parser.add_argument("--workers", type=int, default=-1, help="rapidfuzz workers (-1: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mode = CanonicalMode(args.mode)

    print(f"== bench_vocab_map: {args.source} -> {args.target}, {mode.value} mode ==")
    source_tok, target_tok = load_tokenizer(args.source), load_tokenizer(args.target)
    start = time.perf_counter()
    source = canonical_vocab(source_tok, mode, target_tok)
    target = canonical_vocab(target_tok, mode)
    strings_s = time.perf_counter() - start
    print(f"canonical strings: {len(source):,} source, {len(target):,} target "
          f"({strings_s:.2f} s)")

    start = time.perf_counter()
    mapping = build_vocab_map(source, target, workers=args.workers)
    ours_s = time.perf_counter() - start
    target_set = set(target)
    exact = sum(1 for s in source if s in target_set)
    print(f"ours (full map, cold): {ours_s:.2f} s; exact matches {exact:,} of {len(source):,} "
          f"({exact / len(source):.1%})")

    rows = random.Random(args.seed).sample(range(len(source)), min(args.sample, len(source)))
    start = time.perf_counter()
    oracle = brute_force_vocab_map(source, target, rows)
    sample_s = time.perf_counter() - start
    baseline_s = sample_s / len(rows) * len(source)
    identical = oracle.tolist() == mapping[rows].tolist()
    print(f"baseline (one editdistance call per pair): {sample_s:.2f} s for {len(rows)} rows x "
          f"{len(target):,} targets -> {baseline_s:.0f} s ({baseline_s / 60:.1f} min) "
          f"extrapolated to {len(source):,} rows")
    print(f"sampled rows identical to the fast map: {identical}")
    print(f"speedup: {baseline_s / ours_s:.0f}x")
    met = "met" if ours_s <= TARGET_SECONDS else "not met"
    print(f"target <= {TARGET_SECONDS:.0f} s: {met} ({ours_s:.2f} s)")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
