"""A Gemma-3-270M distillation step with the LM head only at the answer rows vs the full head.

One step = forward + answer-only selective KD loss (λ·CE + (1-λ)·KD against one teacher's top-16
at every answer position) + backward, on micro-batches of packaged RTE samples, LoRA as the
participants train it. ``full``: the model's own forward pass (logits at every position, the
262,144-way head included) then ``combined_loss``; ``ours``: ``SelectiveHead`` (the body once, the
head only at the rows the loss reads) then ``combined_loss_at`` — what ``DistillStep`` runs.
Both see the same batches and teacher; the losses must agree. Prints seconds per step and the
speedup. Run: ``python -m benchmarks.bench_lm_head [--model gemma3-270m] [--steps 3]``.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.steps_common import encoded_samples, lora_model, timed
from fedmkt.data.tokenize import collate
from fedmkt.knowledge.kd_loss import TeacherTargets, combined_loss, combined_loss_at
from fedmkt.models.heads import SelectiveHead
from fedmkt.participant.distill import answer_positions, forward_rows


def teacher_for(batch: dict[str, torch.Tensor], vocab: int, k: int = 16) -> TeacherTargets:
    gen = torch.Generator().manual_seed(1)
    shape = (*batch["input_ids"].shape, k)
    return TeacherTargets(torch.randint(0, vocab, shape, generator=gen),
                          torch.randn(shape, generator=gen) * 3,
                          answer_positions(batch["labels"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_lm_head", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--task", default="rte")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    model, tokenizer = lora_model(args.model, args.threads)
    model.train()
    split = encoded_samples(tokenizer, args.task, args.batch_size * (args.steps + 1),
                            args.max_length)
    pad = tokenizer.pad_token_id or 0
    batches = [collate(split.encoded[i : i + args.batch_size], pad)
               for i in range(0, len(split), args.batch_size)]
    head = SelectiveHead.for_model(model)
    vocab = head.vocab_size(torch.empty(0))
    weights = torch.ones((args.batch_size, 1))
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])
    answer_rows = sum(int(answer_positions(b["labels"]).sum()) for b in batches[1:])
    print(f"== bench_lm_head: {args.model} (vocab {vocab:,}, fast head: {head.fast}), "
          f"{args.steps} steps of {args.batch_size} {args.task} samples, {tokens} tokens, "
          f"{answer_rows} answer rows, {args.threads} threads ==")

    def full(batch: dict[str, torch.Tensor]) -> float:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = combined_loss(logits, batch["labels"], [teacher_for(batch, vocab)], weights,
                             kd_alpha=0.9).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    def ours(batch: dict[str, torch.Tensor]) -> float:
        target = teacher_for(batch, vocab)
        rows = forward_rows(head, batch, [target.mask])
        loss = combined_loss_at(rows.logits, rows.next_token, [rows.take_teacher(target)],
                                weights, kd_alpha=0.9).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    results = {}
    for name, step in (("full", full), ("ours", ours)):
        step(batches[0])  # warm-up, untimed
        seconds, losses = timed(lambda s=step: [s(b) for b in batches[1:]])
        results[name] = (seconds, losses)
        print(f"{name:>4}: {seconds / args.steps:.2f} s/step ({tokens / seconds:.1f} tokens/s)")
    diff = max(abs(a - b) for a, b in zip(results["full"][1], results["ours"][1], strict=True))
    speedup = results["full"][0] / results["ours"][0]
    print(f"losses agree: {diff < 1e-4} (max difference {diff:.2e})")
    print(f"speedup of the distillation step, head at the answer rows vs the full head: "
          f"{speedup:.2f}x")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
