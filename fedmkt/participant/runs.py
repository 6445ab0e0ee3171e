"""Where a participant keeps the state of each run, and which adapter a step starts from.

Layout under the participant's state folder::

    current_run                          the run the participant last worked on
    runs/<run_id>/adapters/round-NNNN/   the adapter at the end of the latest step of a round
    runs/<run_id>/after-train/adapters/round-NNNN/   the adapter right after TrainLocal
    runs/<run_id>/knowledge/round-NNNN/<source>.knowledge   staged teacher knowledge

Every step is idempotent (DESIGN §9): it starts from a defined adapter, never from "whatever is
in memory". TrainLocal of round r starts from the final adapter of the newest round before r;
Distill of round r starts from the adapter saved right after TrainLocal of round r if there is
one, else from the final adapter of the newest round before r. With no adapter, the step starts
from the LoRA initialisation (seeded). Re-running a step therefore gives the same adapter.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedmkt.errors import InvalidArgument
from fedmkt.models.adapters import list_adapters, round_dir
from fedmkt.participant.staging import KnowledgeStore

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CURRENT_RUN_FILE = "current_run"


@dataclass(frozen=True)
class StateKey:
    """Names an adapter state: ``initial`` (LoRA init), ``final`` or ``train`` of a round."""

    kind: str
    round: int = -1


INITIAL = StateKey("initial")


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise InvalidArgument(
            f"run_id {str(run_id)[:80]!r} is not valid: 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return run_id


def check_round(round_index: int) -> int:
    if not isinstance(round_index, int) or round_index < 0:
        raise InvalidArgument(f"round must be a non-negative integer, got {round_index!r}")
    return round_index


class RunFolders:
    """The folders of one run under a participant's state folder."""

    def __init__(self, state_dir: Path, run_id: str) -> None:
        self.run_id = check_run_id(run_id)
        self.root = Path(state_dir) / "runs" / run_id
        self.after_train = self.root / "after-train"
        self.knowledge = KnowledgeStore(self.root / "knowledge")

    def final_rounds(self) -> list[int]:
        return [r for r, _ in list_adapters(self.root)]

    def latest_final(self, before: int | None = None) -> int | None:
        """The newest round with a final adapter (only rounds < ``before`` when given)."""
        rounds = [r for r in self.final_rounds() if before is None or r < before]
        return rounds[-1] if rounds else None

    def has_train_stage(self, round_index: int) -> bool:
        return round_index in [r for r, _ in list_adapters(self.after_train)]

    def path(self, key: StateKey) -> Path:
        if key.kind == "final":
            return round_dir(self.root, key.round)
        if key.kind == "train":
            return round_dir(self.after_train, key.round)
        raise ValueError(f"state {key} has no folder")

    def train_start(self, round_index: int) -> StateKey:
        before = self.latest_final(before=round_index)
        return INITIAL if before is None else StateKey("final", before)

    def distill_start(self, round_index: int) -> StateKey:
        if self.has_train_stage(round_index):
            return StateKey("train", round_index)
        return self.train_start(round_index)


def read_current_run(state_dir: Path) -> str | None:
    path = Path(state_dir) / CURRENT_RUN_FILE
    try:
        run_id = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return run_id if RUN_ID_RE.match(run_id) else None


def write_current_run(state_dir: Path, run_id: str) -> None:
    """Record ``run_id`` as the current run (temporary file renamed into place)."""
    state_dir = Path(state_dir)
    fd, tmp = tempfile.mkstemp(prefix=".current_run-", dir=state_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(run_id + "\n")
        os.replace(tmp, state_dir / CURRENT_RUN_FILE)
    finally:
        Path(tmp).unlink(missing_ok=True)
