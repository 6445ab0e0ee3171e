"""Shared by the participant tests: a small synthetic multiple-choice task and configs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from fedmkt.data.samples import Sample, write_jsonl
from fedmkt.participant.config import ParticipantConfig, build_config

SYLLABLES = ["ka", "lo", "mi", "zu", "re", "po", "ti", "na", "se", "vu", "gi", "bo"]
COLOURS = ["red", "blue", "green", "yellow"]


def nonsense_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(3))


def synthetic_samples(count: int, seed: int = 7) -> list[Sample]:
    """Multiple-choice samples; each holds a distinct made-up word (easy to spot in bytes).

    The right colour follows from the word's first syllable, so a model can learn it."""
    rng = random.Random(seed)
    samples, seen = [], set()
    while len(samples) < count:
        word, place = nonsense_word(rng), nonsense_word(rng)
        if word in seen or place in seen or word == place:
            continue
        seen.update((word, place))  # every made-up word belongs to one sample only
        label = SYLLABLES.index(word[:2]) % len(COLOURS)
        prompt = f"The {word} stone of {place} is coloured"
        samples.append(Sample(f"s{len(samples)}", prompt, " " + COLOURS[label],
                              tuple(" " + c for c in COLOURS), label))
    return samples


def write_task(folder: Path, count: int = 48, seed: int = 7) -> Path:
    path = Path(folder) / "task.jsonl"
    write_jsonl(synthetic_samples(count, seed), path)
    return path


def make_config(task: Path, state_dir: Path, *, name: str, role: str, model: str,
                **overrides: Any) -> ParticipantConfig:
    values: dict[str, Any] = {
        "name": name, "role": role, "model": model, "state_dir": str(state_dir),
        "device": "cpu", "dtype": "float32", "max_length": 64, "batch_size": 4,
        "eval_batch_size": 8, "learning_rate": 5e-3, "top_k": 8, "seed": 3,
        "warmup_ratio": 0.0,
        "data": {"task": str(task), "num_clients": 1, "partition_seed": 11,
                 "eval_fraction": 0.25, "max_public": 12, "max_private": 12, "max_eval": 8},
    }
    for key, value in overrides.items():
        if key == "data":
            values["data"].update(value)
        else:
            values[key] = value
    return build_config(values)


# --------------------------------------------------------------------------- aligner relay
# What the round controller does between participants, written out for the tests.


def target_tokens(tokens: Any) -> dict[str, Any]:
    """``{sample_id: TargetTokens}`` from ``(sample_id, ids)`` pairs or PublicTokensChunks."""
    from fedmkt.wire import codec
    from fedmkt.wire.v1 import aligner_pb2

    out = {}
    for item in tokens:
        if isinstance(item, tuple):
            sample_id, ids = item
            out[sample_id] = aligner_pb2.TargetTokens(sample_id=sample_id,
                                                      token_ids=codec.encode(ids, "int32"))
        else:
            for target in item.samples:
                out[target.sample_id] = target
    return out


def align_requests(chunks: Any, source_fp: str, target_fp: str, targets: dict[str, Any]) -> Any:
    """The AlignKnowledge request stream: the config, then each chunk with the target
    tokenization of every sample whose first part it holds."""
    from fedmkt.wire.v1 import aligner_pb2

    yield aligner_pb2.AlignKnowledgeRequest(config=aligner_pb2.AlignKnowledgeConfig(
        source_fingerprint=source_fp, target_fingerprint=target_fp))
    for chunk in chunks:
        firsts = [s.sample_id for s in chunk.samples if s.part_index == 0]
        yield aligner_pb2.AlignKnowledgeRequest(batch=aligner_pb2.AlignKnowledgeBatch(
            chunk=chunk, targets=[targets[i] for i in firsts if i in targets]))


def aligned_chunks(aligner_stub: Any, chunks: Any, source_fp: str, target_fp: str,
                   targets: dict[str, Any]) -> Any:
    for response in aligner_stub.AlignKnowledge(
            align_requests(chunks, source_fp, target_fp, targets)):
        yield response.chunk


def relay(source: Any, aligner: Any, dest: Any, run_id: str, round_index: int) -> Any:
    """Source participant -> aligner -> destination participant, all over gRPC stubs.
    Returns the destination's ReceiveKnowledgeResponse."""
    from fedmkt.wire.v1 import participant_pb2

    src_fp = source.Describe(participant_pb2.DescribeRequest()).tokenizer.fingerprint
    dst_fp = dest.Describe(participant_pb2.DescribeRequest()).tokenizer.fingerprint
    targets = target_tokens(dest.PublicTokens(participant_pb2.PublicTokensRequest()))
    run = participant_pb2.RunRef(run_id=run_id, round=round_index)
    chunks = source.ComputeKnowledge(participant_pb2.ComputeKnowledgeRequest(run=run))
    return dest.ReceiveKnowledge(
        aligned_chunks(aligner, chunks, src_fp, dst_fp, targets),
        metadata=(("fedmkt-run-id", run_id), ("fedmkt-round", str(round_index))))


def last_progress(stream: Any) -> Any:
    """Drain a Progress stream; return its final message (asserting it says done)."""
    last = None
    for message in stream:
        last = message
    assert last is not None and last.done, f"progress stream ended without done: {last}"
    return last
