"""Multiple-choice evaluation work: each prompt run once (ours) vs one request per choice.

The real pretrained ``smollm2-135m`` builtin (float32, CPU, 2 threads) scores 48 samples of a
2-choice task (RTE) and of a many-choice one (CommonsenseQA, 5 choices) both ways with
:func:`fedmkt.data.metrics.score_choices`:

* ``per-choice``: ``shared_prefix=False``, lm-evaluation-harness style, the whole prompt re-run
  for every choice (the baseline);
* ``ours``: ``shared_prefix=True``, each sample packed into one row (shared prefix, then every
  choice's suffix under a custom attention mask), the LM head only where logits are read.

Printed per task: forward tokens per sample and LM-head positions per sample both ways (from the
``WorkLedger`` each call fills; ours includes, on the first task, the one-time check that scores
one short sample both ways), the floor, the wall-time ratio, accuracies (which must be equal)
and the largest score difference. Targets: >= 1.8x fewer forward tokens on the 2-choice task,
>= 3x on the many-choice one, identical accuracy. ``--tasks`` also takes ``sciq`` (exactly 4
choices after a support passage, target 3x; three times the tokens of the default tasks) and,
for information only, ``arc_easy`` and ``hellaswag``: 4 choices after short prompts, where the
floor itself, 4 (P + s) / (P + 4 s) for prompt P and choice s tokens, is below 3x.
Run: ``python -m benchmarks.bench_eval_tokens`` (``--samples N``, ``--tasks rte sciq``).
"""

from __future__ import annotations

import argparse
import sys
import time

# task -> target ratio of forward tokens (None: informational)
TASKS = {"rte": 1.8, "commonsense_qa": 3.0, "sciq": 3.0, "arc_easy": None, "hellaswag": None}
DEFAULT_TASKS = ["rte", "commonsense_qa"]
SAMPLES = 48
BATCH = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=list(TASKS))
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from fedmkt.data.metrics import _packed_model, score_choices
    from fedmkt.data.tasks import load_task
    from fedmkt.models.loading import load_model
    from fedmkt.models.work import WorkLedger

    torch.set_num_threads(2)
    model, tokenizer = load_model(args.model, dtype="float32", device="cpu")
    packed = _packed_model(model) is not None
    print(f"model {args.model} ({type(model).__name__}, {model.config.model_type}, "
          f"{model.config._attn_implementation}), float32, CPU, 2 threads, batch {BATCH}; "
          f"packed path: {'yes' if packed else 'NO (falls back to per-choice)'}")
    failures = []
    for task in args.tasks:
        samples = load_task(task)[: args.samples]
        n = len(samples)
        runs = {}
        for name, shared in (("per-choice", False), ("ours", True)):
            ledger = WorkLedger()
            start = time.perf_counter()
            scores = score_choices(model, tokenizer, samples, batch_size=BATCH,
                                   shared_prefix=shared, work=ledger)
            runs[name] = (scores, ledger, time.perf_counter() - start)
        (base_scores, base, base_s), (our_scores, ours, our_s) = runs["per-choice"], runs["ours"]
        acc = {name: _accuracies(samples, runs[name][0]) for name in runs}
        diff = float(np.max(np.abs(np.concatenate(base_scores) - np.concatenate(our_scores))))
        fwd = base.done.forward_tokens / ours.done.forward_tokens
        head = base.done.head_positions / ours.done.head_positions
        choices = sorted({len(s.choices) for s in samples})
        print(f"\n{task}: {n} samples, {'/'.join(map(str, choices))} choices")
        print(f"  forward tokens / sample:    per-choice {base.done.forward_tokens / n:6.1f}   "
              f"ours {ours.done.forward_tokens / n:6.1f}   "
              f"floor {ours.floor.forward_tokens / n:6.1f}   ratio {fwd:.2f}x")
        print(f"  LM-head positions / sample: per-choice {base.done.head_positions / n:6.1f}   "
              f"ours {ours.done.head_positions / n:6.1f}   "
              f"floor {ours.floor.head_positions / n:6.1f}   ratio {head:.2f}x")
        print(f"  wall time: per-choice {base_s:6.1f} s   ours {our_s:6.1f} s   "
              f"ratio {base_s / our_s:.2f}x")
        print(f"  acc/acc_norm: per-choice {acc['per-choice']}   ours {acc['ours']}   "
              f"max |score diff| {diff:.2e}")
        target = TASKS[task]
        same = acc["per-choice"] == acc["ours"]
        if target is None:
            print(f"  (informational) accuracy identical: {same}")
            if not same:
                failures.append(f"{task}: accuracy differs")
            continue
        met = fwd >= target and same
        print(f"  target >= {target}x fewer forward tokens, identical accuracy: "
              f"{'met' if met else 'NOT met'}")
        if not met:
            failures.append(f"{task}: {fwd:.2f}x (target {target}x), accuracy same: {same}")
    if failures:
        print(f"\nnot met: {failures}", file=sys.stderr)
        return 1
    return 0


def _accuracies(samples, scores):  # type: ignore[no-untyped-def]
    import numpy as np

    hits = [int(np.argmax(v)) == s.label for s, v in zip(samples, scores, strict=True)]
    norm = [int(np.argmax(np.asarray(v) / [max(len(c), 1) for c in s.choices])) == s.label
            for s, v in zip(samples, scores, strict=True)]
    return (round(float(np.mean(hits)), 4), round(float(np.mean(norm)), 4))


if __name__ == "__main__":
    sys.exit(main())
