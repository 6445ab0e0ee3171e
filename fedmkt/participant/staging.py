"""Received knowledge, staged on disk: one file per (round, source), committed only when whole.

``KnowledgeStore.receive`` validates a chunk stream as it arrives (``fedmkt.wire``: header,
tensors, ids < vocab, finite logits, known sample ids, parts in order) plus what only this
participant can check (the sample's token ids are exactly its own tokenization of that public
sample), and spools every whole sample to a temporary file. Memory stays bounded by one sample.
Only when the stream ended cleanly is the file fsync'ed and renamed over
``<root>/round-NNNN/<source>.knowledge``: a rejected or broken stream leaves no trace and keeps
whatever was committed before; re-sending the same source replaces its file (idempotent).

File format (no pickle): the line ``FEDMKT-KNOWLEDGE 1\\n``, then records, each an 8-byte
little-endian length followed by a serialized ``KnowledgeChunk`` holding exactly one whole sample.
``StagedKnowledge`` reads a committed file back through the same validation, keeping only an
index (sample id -> record offset, loss) in memory.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedmkt.models.atomic import fsync_dir
from fedmkt.participant.config import NAME_RE
from fedmkt.wire import codec
from fedmkt.wire.chunking import KnowledgeSample, chunk_knowledge, iter_samples
from fedmkt.wire.errors import WireError, precondition
from fedmkt.wire.v1 import knowledge_pb2
from fedmkt.wire.validate import decode_chunk

MAGIC = b"FEDMKT-KNOWLEDGE 1\n"
SUFFIX = ".knowledge"
SELF_SOURCE = ".self"  # the student's own snapshot (strategy "fate"); not a teacher
_LENGTH = struct.Struct("<Q")
_MAX_RECORD = 1 << 31
_ROUND_RE = re.compile(r"^round-(\d{4,})$")


@dataclass(frozen=True)
class StagedInfo:
    """What a committed staging file holds."""

    source: str
    round: int
    samples: int
    digest: str  # sha256 hex of the file as committed
    path: Path


@dataclass(frozen=True)
class Expectations:
    """What a receiver checks a stream against."""

    run_id: str
    round: int
    fingerprint: str
    vocab_size: int
    token_ids: Mapping[str, np.ndarray]  # own tokenization of every public sample, by id


class _HashingWriter:
    """Writes records to a binary file and hashes every byte written."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.sha.update(data)

    def record(self, payload: bytes) -> None:
        self.write(_LENGTH.pack(len(payload)))
        self.write(payload)


def check_source_name(source: str) -> str:
    """A source name usable as a file name (the participant-name pattern)."""
    if not NAME_RE.match(source or ""):
        raise WireError(
            f"knowledge header: source {source[:80]!r} is not a valid participant name "
            "(letters, digits, '.', '_', '-'; at most 64 characters, not starting with '.')"
        )
    return source


def _record_for(sample: KnowledgeSample, header: knowledge_pb2.KnowledgeHeader,
                logit_dtype: int) -> bytes:
    """One whole sample as a serialized single-sample chunk."""
    logits = np.where(sample.topk_ids < 0, np.float32(0), sample.topk_logits)
    whole = KnowledgeSample(sample.sample_id, sample.token_ids, sample.topk_ids, logits,
                            sample.position_start, sample.loss, sample.stats)
    chunks = list(chunk_knowledge([whole], header, logit_dtype=logit_dtype,
                                  max_bytes=_MAX_RECORD))
    if len(chunks) != 1 or len(chunks[0].samples) != 1:
        raise AssertionError("a staged record must hold exactly one whole sample")
    return chunks[0].SerializeToString()


def write_records(
    handle: BinaryIO,
    samples: Iterable[KnowledgeSample],
    header: knowledge_pb2.KnowledgeHeader,
    logit_dtype: int,
) -> tuple[int, str]:
    """Write ``MAGIC`` and one record per sample; returns (count, sha256 hex)."""
    writer = _HashingWriter(handle)
    writer.write(MAGIC)
    count = 0
    for sample in samples:
        writer.record(_record_for(sample, header, logit_dtype))
        count += 1
    return count, writer.sha.hexdigest()


def _check_tokens(sample: KnowledgeSample, expected: Mapping[str, np.ndarray]) -> None:
    own = expected[sample.sample_id]  # known ids were checked by the decoder
    if sample.token_ids is None:
        raise WireError(f"sample {sample.sample_id!r}: token_ids are missing (needed to check "
                        "that the knowledge is laid out on this participant's tokenization)")
    if sample.token_ids.shape != own.shape or not np.array_equal(sample.token_ids, own):
        raise precondition(
            f"sample {sample.sample_id!r}: token_ids ({sample.token_ids.size} tokens) are not "
            f"this participant's tokenization of the sample ({own.size} tokens); align the "
            "knowledge onto the token ids from PublicTokens"
        )


def _token_checked(samples: Iterable[KnowledgeSample], expected: Mapping[str, np.ndarray]
                   ) -> Iterator[KnowledgeSample]:
    for sample in samples:
        _check_tokens(sample, expected)
        yield sample


class _StreamState:
    """The first header and logit dtype of a stream, captured as chunks go by."""

    def __init__(self) -> None:
        self.header: knowledge_pb2.KnowledgeHeader | None = None
        self.logit_dtype: int = codec.FLOAT16

    def watch(self, chunks: Iterable[knowledge_pb2.KnowledgeChunk]
              ) -> Iterator[knowledge_pb2.KnowledgeChunk]:
        for chunk in chunks:
            if self.header is None:
                if not chunk.HasField("header"):
                    raise WireError("knowledge chunk has no header")
                check_source_name(chunk.header.source)
                self.header = knowledge_pb2.KnowledgeHeader()
                self.header.CopyFrom(chunk.header)
                if chunk.samples and chunk.samples[0].HasField("topk_logits"):
                    dtype = int(chunk.samples[0].topk_logits.dtype)
                    self.logit_dtype = dtype if dtype in codec.FLOAT_DTYPES else codec.FLOAT16
            yield chunk


class KnowledgeStore:
    """Staged knowledge of one run: ``<root>/round-NNNN/<source>.knowledge``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def round_dir(self, round_index: int) -> Path:
        return self.root / f"round-{round_index:04d}"

    def path(self, round_index: int, source: str) -> Path:
        return self.round_dir(round_index) / f"{source}{SUFFIX}"

    def receive(
        self, chunks: Iterable[knowledge_pb2.KnowledgeChunk], expect: Expectations
    ) -> StagedInfo:
        """Validate and stage one teacher's stream; see the module docstring."""
        state = _StreamState()
        samples = iter_samples(
            state.watch(chunks), vocab_size=expect.vocab_size, run_id=expect.run_id,
            round=expect.round, fingerprint=expect.fingerprint,
            known_sample_ids=expect.token_ids,
        )

        checked = _token_checked(samples, expect.token_ids)
        folder = self.round_dir(expect.round)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".receiving-", suffix=SUFFIX, dir=folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                first = next(checked, None)  # reads chunks until the first whole sample
                if state.header is None:
                    raise WireError("the knowledge stream is empty: no chunk was sent")
                if first is None:
                    raise WireError("the knowledge stream holds no sample")
                count, digest = write_records(handle, _prepend(first, checked),
                                              state.header, state.logit_dtype)
                handle.flush()
                os.fsync(handle.fileno())
            final = self.path(expect.round, state.header.source)
            os.replace(tmp, final)
            fsync_dir(folder)
        finally:
            tmp.unlink(missing_ok=True)
        return StagedInfo(state.header.source, expect.round, count, digest, final)

    def write_local(self, round_index: int, source: str, samples: Iterable[KnowledgeSample],
                    header: knowledge_pb2.KnowledgeHeader, logit_dtype: int) -> StagedInfo:
        """Stage knowledge made here (the student's snapshot): same format and commit rule."""
        folder = self.round_dir(round_index)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".writing-", suffix=SUFFIX, dir=folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                count, digest = write_records(handle, samples, header, logit_dtype)
            final = self.path(round_index, source)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return StagedInfo(source, round_index, count, digest, final)

    def sources(self, round_index: int) -> list[str]:
        """The teachers staged for a round, sorted by name (a stable teacher order)."""
        folder = self.round_dir(round_index)
        if not folder.is_dir():
            return []
        names = [p.name[: -len(SUFFIX)] for p in folder.iterdir()
                 if p.name.endswith(SUFFIX) and not p.name.startswith(".")]
        return sorted(n for n in names if NAME_RE.match(n))

    def open(self, round_index: int, source: str, *, vocab_size: int, fingerprint: str,
             known_ids: Mapping[str, object] | None = None) -> StagedKnowledge:
        return StagedKnowledge(self.path(round_index, source), vocab_size=vocab_size,
                               fingerprint=fingerprint, known_ids=known_ids)

    def prune(self, keep_from_round: int) -> list[Path]:
        """Delete the staging folders of rounds before ``keep_from_round``."""
        removed = []
        if not self.root.is_dir():
            return removed
        for child in self.root.iterdir():
            match = _ROUND_RE.match(child.name)
            if match and int(match.group(1)) < keep_from_round:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
        return removed


def _prepend(first: KnowledgeSample, rest: Iterator[KnowledgeSample]
             ) -> Iterator[KnowledgeSample]:
    yield first
    yield from rest


class StagedKnowledge:
    """Random access to a committed staging file: an index in memory, samples read on demand.

    The file stays open until ``close()`` (or the end of a ``with`` block): a teacher re-sending
    its knowledge meanwhile renames a new file into place, and this reader keeps reading the
    one it indexed."""

    def __init__(self, path: Path, *, vocab_size: int, fingerprint: str,
                 known_ids: Mapping[str, object] | None = None) -> None:
        self.path = Path(path)
        self.vocab_size = vocab_size
        self.fingerprint = fingerprint
        self.known_ids = known_ids
        self.header: knowledge_pb2.KnowledgeHeader | None = None
        self.offsets: dict[str, tuple[int, int]] = {}
        self.losses: dict[str, float] = {}
        self.digest = ""
        self._handle: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()
        try:
            self._scan()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> StagedKnowledge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def source(self) -> str:
        return self.header.source if self.header is not None else ""

    @property
    def top_k(self) -> int:
        return self.header.top_k if self.header is not None else 0

    def _records(self, handle: BinaryIO) -> Iterator[tuple[int, bytes]]:
        if handle.read(len(MAGIC)) != MAGIC:
            raise WireError(f"{self.path} is not a fedmkt knowledge staging file")
        offset = len(MAGIC)
        while True:
            raw = handle.read(_LENGTH.size)
            if not raw:
                return
            if len(raw) != _LENGTH.size:
                raise WireError(f"{self.path}: truncated record length at byte {offset}")
            (size,) = _LENGTH.unpack(raw)
            payload = handle.read(size)
            if len(payload) != size:
                raise WireError(f"{self.path}: truncated record at byte {offset}")
            yield offset + _LENGTH.size, payload
            offset += _LENGTH.size + size

    def _decode(self, payload: bytes) -> KnowledgeSample:
        chunk = knowledge_pb2.KnowledgeChunk.FromString(payload)
        parts = decode_chunk(chunk, vocab_size=self.vocab_size, fingerprint=self.fingerprint,
                             known_sample_ids=self.known_ids)
        if len(parts) != 1 or not parts[0].last_part or parts[0].part_index != 0:
            raise WireError(f"{self.path}: a record must hold exactly one whole sample")
        if self.header is None:
            self.header = chunk.header
        part = parts[0]
        return KnowledgeSample(part.sample_id, part.token_ids, part.topk_ids,
                               np.where(part.topk_ids < 0, np.float32(0), part.topk_logits),
                               part.position_start, part.loss, part.stats)

    def _scan(self) -> None:
        sha = hashlib.sha256()
        handle = self._handle
        for offset, payload in self._records(handle):
            sample = self._decode(payload)
            self.offsets[sample.sample_id] = (offset, len(payload))
            self.losses[sample.sample_id] = sample.loss
        handle.seek(0)
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
        self.digest = sha.hexdigest()

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self.offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def loss(self, sample_id: str) -> float:
        """The teacher's answer NLL on the sample; NaN when it sent none (or no knowledge)."""
        return self.losses.get(sample_id, math.nan)

    def get(self, sample_id: str) -> KnowledgeSample:
        """The whole staged sample (int32 ids, float32 logits, 0.0 at padding slots)."""
        return self.get_many([sample_id])[sample_id]

    def get_many(self, sample_ids: Iterable[str]) -> dict[str, KnowledgeSample]:
        """Several samples at once (those staged; others are left out), in file order."""
        wanted = sorted((self.offsets[s], s) for s in sample_ids if s in self.offsets)
        payloads = []
        with self._lock:
            for (offset, size), sample_id in wanted:
                self._handle.seek(offset)
                payloads.append((sample_id, self._handle.read(size)))
        return {sample_id: self._decode(payload) for sample_id, payload in payloads}
