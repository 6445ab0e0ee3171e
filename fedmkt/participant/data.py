"""The samples one participant holds, tokenized once with its own tokenizer.

``load_local_data`` cuts the configured task exactly as every other party does (same task, same
partition seed) and keeps what this role may hold: the server keeps ``public`` and ``eval`` and
drops the private parts at once (they are never encoded, stored or counted); a client keeps its
own private part as well. ``EncodedSplit`` holds a split's samples with their token ids and labels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmkt.data.partition import PartitionError, partition
from fedmkt.data.samples import Sample, SampleError, check_unique_ids, read_jsonl
from fedmkt.data.tasks import load_task
from fedmkt.data.tokenize import EncodedSample, EncodingError, encode_for_lm
from fedmkt.errors import InvalidArgument
from fedmkt.participant.config import ParticipantConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalData:
    """The splits a participant holds. ``private`` is empty for the server."""

    public: list[Sample]
    eval: list[Sample]
    private: list[Sample] = field(default_factory=list)


@dataclass
class EncodedSplit:
    """Samples of one split and their encodings (same order); ``index`` maps id -> position."""

    name: str
    samples: list[Sample]
    encoded: list[EncodedSample]
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {enc.sample_id: i for i, enc in enumerate(self.encoded)}

    def __len__(self) -> int:
        return len(self.encoded)

    def ids(self) -> list[str]:
        return [enc.sample_id for enc in self.encoded]

    def __iter__(self) -> Iterator[EncodedSample]:
        return iter(self.encoded)


def _cap(samples: list[Sample], limit: int | None) -> list[Sample]:
    return samples if limit is None else samples[:limit]


def _read_file(path: Any, what: str) -> list[Sample]:
    try:
        return read_jsonl(path)
    except (OSError, SampleError) as exc:
        raise InvalidArgument(f"cannot read the {what} file {path}: {exc}") from exc


def load_local_data(config: ParticipantConfig) -> LocalData:
    """The splits ``config``'s role may hold (see module docstring)."""
    data = config.data
    needs_partition = (
        data.public_file is None
        or data.eval_file is None
        or (not config.is_server and data.private_file is None)
    )
    public: list[Sample] = []
    evaluation: list[Sample] = []
    private: list[Sample] = []
    if needs_partition:
        try:
            # A JSONL file needs no packaged dataset (load_task lists the builtins first).
            task_file = Path(data.task)
            samples = read_jsonl(task_file) if task_file.is_file() else load_task(data.task)
            cut = partition(samples, num_clients=data.num_clients, seed=data.partition_seed,
                            eval_fraction=data.eval_fraction, parts=data.parts)
        except (LookupError, OSError, SampleError, PartitionError) as exc:
            raise InvalidArgument(f"cannot load data for task {data.task!r}: {exc}") from exc
        public, evaluation = cut.public, cut.eval
        if not config.is_server:
            private = cut.private[data.client_index]
        del cut, samples  # the server keeps no reference to any private part
    if data.public_file is not None:
        public = _read_file(data.public_file, "public")
    if data.eval_file is not None:
        evaluation = _read_file(data.eval_file, "eval")
    if not config.is_server and data.private_file is not None:
        private = _read_file(data.private_file, "private")
    local = LocalData(
        public=_cap(public, data.max_public),
        eval=_cap(evaluation, data.max_eval),
        private=_cap(private, data.max_private),
    )
    if not local.public:
        raise InvalidArgument("the public split is empty; every participant needs public data")
    check_unique_ids(local.public)
    return local


def encode_split(
    name: str, samples: Sequence[Sample], tokenizer: Any, max_length: int, *, strict: bool
) -> EncodedSplit:
    """Encode every sample; ``strict`` (public data) makes an unencodable sample an error, else
    it is skipped with a warning (a public sample one party skips would be unknown to it)."""
    kept, encoded = [], []
    for sample in samples:
        try:
            encoded.append(encode_for_lm(tokenizer, sample, max_length=max_length))
        except EncodingError as exc:
            if strict:
                raise InvalidArgument(f"{name} split: {exc}") from exc
            log.warning("%s split: skipping sample %s: %s", name, sample.id, exc)
            continue
        kept.append(sample)
    return EncodedSplit(name, kept, encoded)
