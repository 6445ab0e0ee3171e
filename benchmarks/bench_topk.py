"""Knowledge extraction throughput: batched ``extract_topk`` vs a per-position Python loop.

Both run the same forward pass of a 2-layer Llama (vocab 49,152, built from a config) on a
right-padded batch and return the same top-k ids, logits and answer NLLs; the baseline
(``naive_topk``) then takes ``topk``/``log_softmax`` one position at a time, as a straight port of
the reference would. Throughput is real positions per second, best of ``--repeats`` runs, end to
end and for the part after the forward pass alone (the part the two differ in).
Run: ``python -m benchmarks.bench_topk [--device cuda]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedmkt.knowledge.topk import (
    collate,
    extract_topk,
    naive_topk,
    naive_topk_from_logits,
    topk_from_logits,
)

VOCAB = 49_152


class _Sample:
    def __init__(self, sample_id: str, ids: np.ndarray, prompt: int) -> None:
        self.sample_id = sample_id
        self.input_ids = ids
        self.labels = np.where(np.arange(ids.size) < prompt, -100, ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (1: stable timings on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))

    torch.manual_seed(0)
    device = torch.device(args.device)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=args.length,
    )
    model = LlamaForCausalLM(config).to(device)
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.length // 2, args.length + 1, args.batch)
    samples = [_Sample(str(i), rng.integers(0, VOCAB, n), int(n) // 3)
               for i, n in enumerate(lengths)]
    batch = collate(samples, device=device)
    positions = int(sum(int(n) - 1 for n in lengths))

    fast, slow = _best_seconds(
        lambda: extract_topk(model, batch, args.k),
        lambda: naive_topk(model, batch, args.k),
        args.repeats, device,
    )
    with torch.inference_mode():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask, labels = batch["attention_mask"], batch["labels"]
    fast_post, slow_post = _best_seconds(
        lambda: topk_from_logits(logits, mask, labels, args.k),
        lambda: naive_topk_from_logits(logits, mask, labels, args.k),
        args.repeats, device,
    )
    print(f"top-k extraction ({device}, {torch.get_num_threads()} CPU threads): "
          f"batch {args.batch}, up to {args.length} tokens, "
          f"vocab {VOCAB:,}, k {args.k}, {positions} positions")
    print("  with the forward pass            naive (per position)   batched (ours)")
    print(f"    positions/s                    {positions / slow:18,.0f} "
          f"{positions / fast:16,.0f}")
    print("  after the forward pass (top-k + answer NLL)")
    print(f"    positions/s                    {positions / slow_post:18,.0f} "
          f"{positions / fast_post:16,.0f}")
    print(f"ratio extract_topk / naive_topk: {slow / fast:.1f}x end to end, "
          f"{slow_post / fast_post:.1f}x after the forward pass")
    return 0


def _best_seconds(
    ours: Callable[[], object], baseline: Callable[[], object], repeats: int,
    device: torch.device,
) -> tuple[float, float]:
    """Best time of each, the two run alternately so that load changes hit both alike.

    On CPU the time is this process's CPU time (one thread), which other processes on a shared
    machine disturb far less than wall time; on an accelerator it is wall time.
    """
    clock = time.perf_counter if device.type != "cpu" else time.process_time
    best = [float("inf"), float("inf")]
    for _ in range(max(1, repeats) + 1):  # the first round is a warm-up
        for i, fn in enumerate((ours, baseline)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = clock()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[i] = min(best[i], clock() - start)
    return best[0], best[1]


if __name__ == "__main__":
    raise SystemExit(main())
