"""MinED vocabulary maps, cold, for real tokenizer pairs: ours vs the reference brute force.

Default: mistral (32,000) → gpt2 (50,257) in surface mode (the original figure), then every
ordered pair of the three real models' tokenizers — smollm2 (49,152), gemma3 (262,144), qwen2
(151,936) — in both canonical modes (surface, fate). ``--source/--target`` runs one pair
(``--mode``: surface, fate or both; default surface, as before).

Per pair: the canonical strings computed cold (the per-tokenizer cache is cleared), the full
``build_vocab_map`` timed from those strings (no map cache), their total against the 10 s goal,
and the reference algorithm — one ``editdistance.eval`` call per (source, target) pair — timed
on sampled source rows against all targets and extrapolated to the whole source vocabulary.
Half of the sampled rows are hard ones (no exact match, mapped at distance ≥ 2); the sampled
rows must equal our map. Tokenizers are loaded before the clocks start.
Run: ``python -m benchmarks.bench_vocab_map [--sample 12] [--workers -1] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from fedmkt.align import canonical
from fedmkt.align.canonical import CanonicalMode, canonical_vocab
from fedmkt.align.vocab_map import brute_force_vocab_map, build_vocab_map
from fedmkt.models.tokenizers import load_tokenizer

TARGET_SECONDS = 10.0
REAL = ("smollm2", "gemma3", "qwen2")


def default_runs() -> list[tuple[str, str, CanonicalMode]]:
    runs = [("mistral", "gpt2", CanonicalMode.SURFACE)]
    for mode in CanonicalMode:
        runs += [(a, b, mode) for a in REAL for b in REAL if a != b]
    return runs


def sample_rows(source: Sequence[str], target: Sequence[str], mapping: np.ndarray, count: int,
                rng: random.Random) -> list[int]:
    """``count`` source rows: half hard (no exact match, mapped at distance >= 2), half any."""
    target_set = set(target)
    pool = [i for i, s in enumerate(source) if s not in target_set]
    rng.shuffle(pool)
    hard: list[int] = []
    for i in pool:
        if len(hard) >= count // 2:
            break
        if Levenshtein.distance(source[i], target[mapping[i]]) >= 2:
            hard.append(i)
    chosen = set(hard)
    rest = [i for i in rng.sample(range(len(source)), min(len(source), 4 * count))
            if i not in chosen]
    return hard + rest[:count - len(hard)]


def run_pair(source_name: str, target_name: str, mode: CanonicalMode, sample: int,
             workers: int, seed: int) -> bool:
    source_tok, target_tok = load_tokenizer(source_name), load_tokenizer(target_name)
    canonical._SURFACE_CACHE.clear()  # cold: the strings are derived again
    start = time.perf_counter()
    source = canonical_vocab(source_tok, mode, target_tok)
    target = canonical_vocab(target_tok, mode)
    strings_s = time.perf_counter() - start
    start = time.perf_counter()
    mapping = build_vocab_map(source, target, workers=workers)
    map_s = time.perf_counter() - start
    total_s = strings_s + map_s

    rng = random.Random(f"{seed}-{source_name}-{target_name}-{mode.value}")
    rows = sample_rows(source, target, mapping, sample, rng)
    start = time.perf_counter()
    oracle = brute_force_vocab_map(source, target, rows)
    sample_s = time.perf_counter() - start
    baseline_s = sample_s / max(len(rows), 1) * len(source)
    identical = oracle.tolist() == mapping[rows].tolist()
    met = "met" if total_s <= TARGET_SECONDS else "NOT met"
    print(f"{source_name:>7} -> {target_name:<7} {mode.value:<7}  "
          f"{len(source):>7,} -> {len(target):>7,}  strings {strings_s:5.2f} s  "
          f"map {map_s:6.2f} s  total {total_s:6.2f} s  <= {TARGET_SECONDS:.0f} s: {met:<7}  "
          f"brute force ~{baseline_s:7.0f} s ({len(rows)} rows, {sample_s:.1f} s)  "
          f"speedup {baseline_s / map_s:5.0f}x  identical on sampled rows: {identical}",
          flush=True)
    return identical


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_vocab_map",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--source", help="one pair: source tokenizer (with --target)")
    parser.add_argument("--target", help="one pair: target tokenizer (with --source)")
    parser.add_argument("--mode", default=None, choices=[*(m.value for m in CanonicalMode), "both"],
                        help="canonical mode for --source/--target (default surface)")
    parser.add_argument("--sample", type=int, default=12,
                        help="source rows timed with the brute force per pair (default 12)")
    parser.add_argument("--workers", type=int, default=-1, help="threads (-1: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.source is None) != (args.target is None):
        parser.error("--source and --target go together")
    if args.source is not None:
        modes = list(CanonicalMode) if args.mode == "both" else [
            CanonicalMode(args.mode or CanonicalMode.SURFACE.value)]
        runs = [(args.source, args.target, mode) for mode in modes]
    else:
        runs = default_runs()
        if args.mode not in (None, "both"):
            runs = [r for r in runs if r[2] is CanonicalMode(args.mode)]

    print(f"== bench_vocab_map: MinED map, cold, {len(runs)} runs; goal <= {TARGET_SECONDS:.0f} s "
          "from loaded tokenizers (strings + map); brute force: one editdistance call per pair ==")
    for name in dict.fromkeys(n for a, b, _ in runs for n in (a, b)):
        load_tokenizer(name)  # loading (and a first assembly) is not part of the figures
    start = time.perf_counter()
    results = [run_pair(a, b, mode, args.sample, args.workers, args.seed) for a, b, mode in runs]
    print(f"all sampled rows identical: {all(results)}; {sum(results)}/{len(results)} pairs; "
          f"{time.perf_counter() - start:.0f} s in all")
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
