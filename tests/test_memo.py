"""Reusing the results of provably identical steps (fedmkt.participant.memo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedmkt.participant.core import Participant
from fedmkt.participant.memo import StepMemo, digest_split, digest_tensors
from tests.participant_helpers import make_config, write_task


def test_entries_round_trip_and_damaged_ones_are_ignored(tmp_path: Path) -> None:
    memo = StepMemo(tmp_path / "memo")
    key = StepMemo.key(step="train_local", seed=1)
    assert memo.get(key) is None
    memo.put(key, {"loss": 1.5, "bad": float("nan")}, adapter=b"weights")
    entry = memo.get(key)
    assert entry is not None and entry.metrics == {"loss": 1.5} and entry.adapter == b"weights"
    (tmp_path / "memo" / f"{key}.safetensors").write_bytes(b"other weights")
    assert memo.get(key) is None  # the adapter no longer matches its digest
    other = StepMemo.key(step="evaluate")
    memo.put(other, {"acc": 0.5})
    meta = tmp_path / "memo" / f"{other}.json"
    meta.write_text(json.dumps({"key": "someone else", "metrics": {"acc": 0.5}}))
    assert memo.get(other) is None
    meta.write_text("{not json")
    assert memo.get(other) is None
    assert not [p for p in (tmp_path / "memo").iterdir() if p.name.startswith(".")]


def test_keys_and_digests_change_with_every_input() -> None:
    assert StepMemo.key(a=1, b=[1, 2]) == StepMemo.key(b=[1, 2], a=1)
    assert StepMemo.key(a=1) != StepMemo.key(a=2)
    state = {"x": torch.zeros(3), "y": torch.ones(2, dtype=torch.bfloat16)}
    flipped = {"x": torch.tensor([0.0, 0.0, -0.0]), "y": state["y"]}  # one bit differs
    assert digest_tensors(state) == digest_tensors(dict(state))
    assert digest_tensors(state) != digest_tensors(flipped)

    class Enc:
        def __init__(self, sample_id: str, ids: list[int], labels: list[int]) -> None:
            self.sample_id, self.input_ids, self.labels = sample_id, ids, labels

    one = [Enc("a", [1, 2, 3], [-100, 2, 3])]
    assert digest_split(one) != digest_split([Enc("a", [1, 2, 3], [-100, -100, 3])])
    assert digest_split(one) != digest_split([Enc("b", [1, 2, 3], [-100, 2, 3])])


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task(tmp_path_factory.mktemp("task"))


def test_an_identical_step_of_another_run_is_reused(task: Path, tmp_path: Path) -> None:
    memo = tmp_path / "shared-memo"

    def client(folder: str, **overrides) -> Participant:
        return Participant(make_config(task, tmp_path / folder, name="client-0", role="client",
                                       model="tiny-gpt2", memo_dir=str(memo), **overrides))

    first = client("fedmkt")
    trained = first.train_local("run-a", 1)
    evaluated = first.evaluate("run-a")
    assert "reused" not in trained and trained["work/forward_tokens"] > 0

    baseline = client("baseline")  # another process, state folder and run: same computation
    again = baseline.train_local("run-a-baseline", 1)
    assert again["reused"] == 1.0 and "work/forward_tokens" not in again
    assert again["loss"] == trained["loss"]
    assert baseline.fetch_adapter(1).data == first.fetch_adapter(1, "run-a").data
    same_eval = baseline.evaluate("run-a-baseline")
    assert same_eval["reused"] == 1.0 and same_eval["acc"] == evaluated["acc"]

    other_seed = client("seed", seed=4)
    assert "reused" not in other_seed.train_local("run-b", 1)
    assert "reused" not in baseline.train_local("run-a-baseline", 2)  # starts elsewhere


def test_public_ce_of_an_identical_start_is_reused(task: Path, tmp_path: Path) -> None:
    """The ablation run's LLM fine-tunes on the public data exactly as the baseline's did."""
    memo = tmp_path / "shared-memo"

    def server(folder: str) -> Participant:
        return Participant(make_config(task, tmp_path / folder, name="llm", role="server",
                                       model="tiny-gpt2", memo_dir=str(memo)))

    baseline = server("baseline")
    first = baseline.distill("run-b", 1, strategy="none")
    assert "reused" not in first and first["work/backward_tokens"] > 0
    ablation = server("ablation")
    again = ablation.distill("run-b-ablation", 1, strategy="none")
    assert again["reused"] == 1.0 and again["loss"] == first["loss"]
    assert ablation.fetch_adapter(1).data == baseline.fetch_adapter(1, "run-b").data
    assert "reused" not in ablation.distill("run-b-ablation", 2, strategy="none")  # new start
