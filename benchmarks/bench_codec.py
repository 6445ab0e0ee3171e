"""Knowledge wire codec: throughput and bytes on the wire against their baselines.

Runs the whole path a knowledge stream takes: ``chunk_knowledge`` -> ``SerializeToString`` (the
sender), ``ParseFromString`` -> validation -> ``SampleAssembler`` (the receiver), for random
knowledge of realistic shape. Prints

* wire bytes per position against the floor of k × 6 bytes (an int32 id and a float16 logit per
  slot), as ``wire bytes / floor`` (target <= 1.10);
* throughput in MB/s of wire bytes, and the payload rate against a JSON-lists encoding of the same
  knowledge measured in the same run (the obvious alternative for an HTTP API).

Usage: ``python -m benchmarks.bench_codec [--samples N] [--positions P] [--k 16 128]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from fedmkt.wire.chunking import DEFAULT_MAX_BYTES, KnowledgeSample, chunk_knowledge, iter_samples
from fedmkt.wire.v1 import knowledge_pb2

VOCAB = 50_257
MB = 1e6
T = TypeVar("T")


def make_samples(count: int, positions: int, k: int, seed: int = 0) -> list[KnowledgeSample]:
    """Random knowledge: distinct ids per row, normal logits, ``positions + 1`` tokens each."""
    rng = np.random.default_rng(seed)
    stride = np.arange(k, dtype=np.int64) * 7_919  # 7919 is prime, coprime with VOCAB
    samples = []
    for i in range(count):
        base = rng.integers(0, VOCAB, (positions, 1))
        samples.append(
            KnowledgeSample(
                sample_id=f"public-{i:06d}",
                token_ids=rng.integers(0, VOCAB, positions + 1).astype(np.int32),
                topk_ids=((base + stride) % VOCAB).astype(np.int32),
                topk_logits=rng.standard_normal((positions, k)).astype(np.float32) * 3,
                loss=float(rng.random() * 20),
            )
        )
    return samples


def _best(repeat: int, fn: Callable[[], T]) -> tuple[float, T]:
    """The shortest wall time of ``repeat`` runs of ``fn``, and its last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result  # type: ignore[return-value]


def _send(samples: list[KnowledgeSample], header: dict[str, object]) -> list[bytes]:
    return [c.SerializeToString() for c in chunk_knowledge(samples, header)]


def _receive(blobs: list[bytes], k: int) -> list[KnowledgeSample]:
    def parsed():
        for blob in blobs:
            chunk = knowledge_pb2.KnowledgeChunk()
            chunk.ParseFromString(blob)
            yield chunk

    return list(iter_samples(parsed(), vocab_size=VOCAB, run_id="bench", round=0, top_k=k))


def _json_round_trip(samples: list[KnowledgeSample]) -> int:
    """Baseline: the same knowledge as JSON lists (float logits rounded to 4 decimals)."""
    size = 0
    for s in samples:
        text = json.dumps(
            {
                "sample_id": s.sample_id,
                "token_ids": s.token_ids.tolist(),
                "topk_ids": s.topk_ids.tolist(),
                "topk_logits": np.round(s.topk_logits, 4).tolist(),
                "loss": s.loss,
            }
        )
        size += len(text)
        back = json.loads(text)
        np.asarray(back["topk_ids"], dtype=np.int32)
        np.asarray(back["topk_logits"], dtype=np.float32)
    return size


def bench_one(count: int, positions: int, k: int, repeat: int, json_count: int) -> None:
    samples = make_samples(count, positions, k)
    header = dict(run_id="bench", round=0, source="client-0", tokenizer_fingerprint="fp", top_k=k)
    send_s, blobs = _best(repeat, lambda: _send(samples, header))
    recv_s, received = _best(repeat, lambda: _receive(blobs, k))
    assert [s.sample_id for s in received] == [s.sample_id for s in samples]
    assert np.array_equal(received[-1].topk_ids, samples[-1].topk_ids)

    wire = sum(len(b) for b in blobs)
    floor = count * positions * k * 6
    print(f"k={k}: {count} samples x {positions} positions, logits float16")
    print(
        f"  wire: {wire / MB:.1f} MB in {len(blobs)} chunks, largest {max(map(len, blobs)):,} B"
        f" (limit {DEFAULT_MAX_BYTES:,} B)"
    )
    print(
        f"  bytes per position: {wire / (count * positions):.1f} vs floor {k * 6}"
        f" -> wire bytes / floor = {wire / floor:.3f} (target <= 1.10)"
    )
    print(
        f"  send (chunk + serialize): {wire / send_s / MB:,.0f} MB/s;"
        f" receive (parse + validate + assemble): {wire / recv_s / MB:,.0f} MB/s;"
        f" round trip: {wire / (send_s + recv_s) / MB:,.0f} MB/s"
    )
    subset = samples[:json_count]
    json_s, _ = _best(1, lambda: _json_round_trip(subset))
    ours_rate = floor / (send_s + recv_s)  # payload bytes (the floor) per second
    json_rate = (json_count * positions * k * 6) / json_s
    print(
        f"  baseline JSON lists ({json_count} samples): {json_rate / MB:,.1f} MB/s of payload;"
        f" ours {ours_rate / MB:,.0f} MB/s -> ratio ours / JSON = {ours_rate / json_rate:.0f}x"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_codec", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--samples", type=int, default=256, help="samples for k=16")
    parser.add_argument("--positions", type=int, default=512)
    parser.add_argument("--k", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print("== bench_codec: knowledge stream encode -> wire -> validate -> assemble ==")
    for k in args.k:
        count = max(1, args.samples * 16 // max(k, 16))  # the same payload for every k
        bench_one(count, args.positions, k, args.repeat, json_count=max(1, count // 16))


if __name__ == "__main__":
    main()
