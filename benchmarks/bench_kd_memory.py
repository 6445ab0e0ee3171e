"""Peak memory of one KD training step: sparse KD (ours) vs a dense-target baseline.

One step = forward + loss + backward of a 2-layer Llama (hidden 256, vocab 49,152, all weights
trainable) on one sequence of 512 tokens, with 4 teachers' top-16 knowledge. Variants:

* ``ce``: plain cross-entropy step (the model's own loss), no KD;
* ``ours``: :func:`fedmkt.knowledge.kd_loss.combined_loss`, all 4 teachers weighted (the worst
  case for us: DualMinCE uses a single teacher per sample);
* ``naive``: sparse, but a dense ``log_softmax`` gathered once per teacher;
* ``dense``: like the FATE-LLM reference: each teacher's top-k turned into a dense
  ``[batch, length, vocab]`` target, stacked with its reward, the best one gathered, then a
  soft-target cross-entropy. Building the dense targets counts as part of the step (the reference
  builds them per batch in its data collator).

Each variant runs in a fresh subprocess (one thread, glibc's mmap threshold fixed so that freed
tensors leave the resident set at once). On CPU the peak resident set size is reset once the
inputs (model, tokens, sparse knowledge) are built (``/proc/self/clear_refs``), and the step's
peak is read from ``getrusage(RUSAGE_SELF).ru_maxrss``; reported is the peak above the RSS after
the inputs. With ``--device cuda`` the peak is ``torch.cuda.max_memory_allocated`` above the
inputs. Run: ``python -m benchmarks.bench_kd_memory`` (or ``python benchmarks/bench_kd_memory.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

VOCAB = 49_152
LENGTH = 512
TEACHERS = 4
TOP_K = 16
VARIANTS = ("ce", "ours", "naive", "dense")
TARGET_RATIO = 0.1
MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.child, args.device)))
        return 0
    results = {name: _run_child(name, args.device) for name in VARIANTS}
    _report(results, args.device)
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (peak allocated)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _run_child(variant: str, device: str) -> dict[str, float]:
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--device", device]
    # A fixed mmap threshold makes glibc return every large block to the system when it is
    # freed, so the resident set follows the live tensors instead of the allocator's caching.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"variant {variant!r} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _report(results: dict[str, dict[str, float]], device: str) -> None:
    unit = "peak RSS" if device == "cpu" else "peak allocated"
    print(f"KD step memory ({device}, {unit} above inputs): {TEACHERS} teachers, vocab {VOCAB:,}, "
          f"length {LENGTH}, batch 1, top-k {TOP_K}")
    base = results["ce"]["peak_mib"]
    labels = {"ce": "CE only", "ours": "ours (sparse KD)", "naive": "naive sparse",
              "dense": "dense baseline"}
    for name in VARIANTS:
        peak = results[name]["peak_mib"]
        extra = "" if name == "ce" else f"   KD adds {peak - base:+8.1f} MiB"
        print(f"  {labels[name]:<18} {peak:8.1f} MiB{extra}")
    ours_added = results["ours"]["peak_mib"] - base
    dense_added = results["dense"]["peak_mib"] - base
    ratio = ours_added / dense_added if dense_added > 0 else float("nan")
    verdict = "met" if ratio <= TARGET_RATIO else "not met"
    print(f"ratio (ours adds / dense adds) = {ratio:.3f}   target <= 1/10: {verdict}")
    if ours_added < 0:
        print("  (ours adds < 0: our step, CE included, peaks below the model's own CE loss, "
              "whose [L, V] log_softmax output it never builds)")
    total = results["dense"]["peak_mib"] / max(1e-9, results["ours"]["peak_mib"])
    print(f"dense / ours whole-step peak = {total:.2f}x")


# --------------------------------------------------------------------------- child process


def _measure(variant: str, device_name: str) -> dict[str, float]:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    device = torch.device(device_name)
    model, inputs, teachers = _build_inputs(device)
    gc.collect()
    start = _current(device)
    _reset_peak(device)
    loss = _STEPS[variant](model, inputs, teachers)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = _peak(device)
    return {"variant": variant, "inputs_mib": start / MIB, "peak_mib": (peak - start) / MIB,
            "loss": float(loss.detach())}


def _build_inputs(device):  # type: ignore[no-untyped-def]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=LENGTH,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(device).train()
    input_ids = torch.randint(0, VOCAB, (1, LENGTH), device=device)
    labels = input_ids.clone()
    labels[:, : LENGTH // 4] = -100  # the prompt is not scored
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "labels": labels}
    teachers = []
    for _ in range(TEACHERS):
        ids = torch.stack([torch.randperm(VOCAB, device=device)[:TOP_K] for _ in range(LENGTH)])
        logits = torch.randn(LENGTH, TOP_K, device=device).sort(dim=-1, descending=True).values
        mask = torch.ones(1, LENGTH, dtype=torch.bool, device=device)
        teachers.append((ids.unsqueeze(0).int(), logits.unsqueeze(0), mask))
    return model, inputs, teachers


def _step_ce(model, inputs, teachers):  # type: ignore[no-untyped-def]
    return model(**inputs).loss


def _step_ours(model, inputs, teachers):  # type: ignore[no-untyped-def]
    import torch

    from fedmkt.knowledge.kd_loss import combined_loss

    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    weights = torch.full((1, TEACHERS), 1.0 / TEACHERS, device=logits.device)
    return combined_loss(logits, inputs["labels"], teachers, weights, kd_alpha=0.9).loss


def _step_naive(model, inputs, teachers):  # type: ignore[no-untyped-def]
    import torch

    out = model(**inputs)
    log_q = torch.log_softmax(out.logits.float(), dim=-1)
    kd = 0.0
    for ids, logits, mask in teachers:
        p = torch.softmax(logits.float(), dim=-1)
        per_position = -(p * log_q.gather(-1, ids.long())).sum(-1)
        kd = kd + (per_position * mask).sum() / mask.sum() / TEACHERS
    return 0.9 * out.loss + 0.1 * kd


def _step_dense(model, inputs, teachers):  # type: ignore[no-untyped-def]
    import torch
    import torch.nn.functional as F

    out = model(**inputs)
    logits = out.logits
    dists, rewards = [], []
    for t, (ids, top_logits, _mask) in enumerate(teachers):
        dist = torch.zeros_like(logits)
        dist.scatter_(-1, ids.long(), torch.softmax(top_logits.float(), dim=-1))
        dists.append(dist)
        reward = torch.tensor([1.0 / (1.0 + t)], dtype=torch.bfloat16, device=logits.device)
        rewards.append(reward.unsqueeze(-1).unsqueeze(-1).expand_as(dist))
    stacked = torch.stack(dists, dim=-1)
    stacked_rewards = torch.stack(rewards, dim=-1)
    best = torch.argmax(stacked_rewards, dim=-1, keepdim=True)
    target = torch.gather(stacked, -1, best).squeeze(-1)
    batch, length, vocab = logits.shape
    kd = F.cross_entropy(logits.view(-1, vocab), target.view(-1, vocab), reduction="none")
    mask = inputs["attention_mask"]
    kd = (kd.view(batch, -1) * mask).sum() / mask.sum()
    return 0.9 * out.loss + 0.1 * kd


_STEPS = {"ce": _step_ce, "ours": _step_ours, "naive": _step_naive, "dense": _step_dense}


def _current(device) -> int:  # type: ignore[no-untyped-def]
    if device.type == "cuda":
        import torch

        return int(torch.cuda.memory_allocated(device))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return _maxrss()


def _reset_peak(device) -> None:  # type: ignore[no-untyped-def]
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    except OSError:
        pass  # then ru_maxrss may include an earlier, larger peak: a conservative reading


def _peak(device) -> int:  # type: ignore[no-untyped-def]
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return _maxrss()


def _maxrss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kB on Linux


if __name__ == "__main__":
    raise SystemExit(main())
