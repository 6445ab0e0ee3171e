"""In-process fake participants and aligner implementing the controller's Protocols.

They behave like the real services at the level the round logic can see: knowledge streams are
real ``KnowledgeChunk`` messages (built with ``fedmkt.wire.chunking``), receivers validate them
with ``fedmkt.wire`` and stage one digest per (round, source), the aligner projects onto the
destination's own token ids (so a controller that forgets the TargetTokens is caught), and every
call honours its deadline and cancel scope. Scripted behaviour makes a call slow (to miss a
deadline), unreachable, or fail, per step and round. A shared ``CallLog`` records every call
with its start and end time, so tests can assert order and parallelism.

Used by the tests and by ``fedmkt run --dry-run``-style checks; no network, no models.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from fedmkt.data.outcomes import SampleOutcomes, outcomes_of
from fedmkt.federation.errors import CallFailed, Unreachable
from fedmkt.federation.interfaces import (
    AdapterBlob,
    CallOptions,
    ListStream,
    ParticipantDescription,
    ProgressUpdate,
    PushResult,
    ReceiveResult,
)
from fedmkt.wire import codec
from fedmkt.wire.chunking import KnowledgeSample, SampleAssembler, chunk_knowledge, iter_samples
from fedmkt.wire.v1 import aligner_pb2, knowledge_pb2
from fedmkt.wire.validate import SampleStats, decode_chunk


@dataclass
class CallEntry:
    participant: str
    step: str
    round: int
    started: float
    ended: float = 0.0
    ok: bool = False


FAKE_PUBLIC = 4  # public samples a fake participant reports distilling over
FAKE_EVAL = 20  # held-out samples a fake participant reports per-sample results for


class CallLog:
    """Every call the fakes served, in start order; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[CallEntry] = []
        self._running = 0
        self.max_concurrent: dict[str, int] = {}

    def begin(self, participant: str, step: str, round_index: int) -> CallEntry:
        entry = CallEntry(participant, step, round_index, time.monotonic())
        with self._lock:
            self.entries.append(entry)
        return entry

    def end(self, entry: CallEntry, ok: bool) -> None:
        entry.ended, entry.ok = time.monotonic(), ok

    def calls(self, step: str | None = None, round_index: int | None = None,
              ok: bool | None = None) -> list[CallEntry]:
        with self._lock:
            return [e for e in self.entries
                    if (step is None or e.step == step)
                    and (round_index is None or e.round == round_index)
                    and (ok is None or e.ok == ok)]

    def keys(self, ok: bool | None = True) -> list[tuple[int, str, str]]:
        """(round, step, participant) of the calls, in start order."""
        return [(e.round, e.step, e.participant) for e in self.calls(ok=ok)]


@dataclass
class Script:
    """Scripted behaviour: ``(step, round)`` → action; round ``None`` matches every round.

    Actions: ``("delay", seconds)`` sleeps (honouring the deadline), ``("unavailable",)``,
    ``("unavailable_times", n)`` (the first n calls only: a restart), ``("error", code)``,
    ``("crash",)`` raises RuntimeError (a bug / a crash)."""

    actions: dict[tuple[str, int | None], tuple] = field(default_factory=dict)

    def action(self, step: str, round_index: int) -> tuple | None:
        return self.actions.get((step, round_index)) or self.actions.get((step, None))


def _fingerprint(name: str) -> str:
    return hashlib.sha256(f"fake-tokenizer:{name}".encode()).hexdigest()


class FakeParticipant:
    """A participant with a tiny fake tokenizer (``vocab`` ids) and fake public data."""

    def __init__(self, name: str, role: str, *, log: CallLog, public: int = 6, private: int = 4,
                 vocab: int = 97, tokenizer: str | None = None, script: Script | None = None,
                 step_seconds: float = 0.0) -> None:
        self.name = name
        self.role = role
        self.log = log
        self.vocab = vocab
        self.tokenizer = tokenizer or f"fake-{name}"
        self.fingerprint = _fingerprint(self.tokenizer)
        self.public_ids = [f"pub-{i}" for i in range(public)]
        self.private = private
        self.script = script or Script()
        self.step_seconds = step_seconds
        self.staged: dict[tuple[int, str], str] = {}  # (round, source) -> digest
        self.updates = 0  # train/distill steps applied: what evaluation reports
        self.adapter_round = -1
        self.pushed: list[bytes] = []
        self._failures: dict[int, int] = {}

    # -- helpers ----------------------------------------------------------------------
    def tokens(self, sample_id: str) -> np.ndarray:
        """This participant's own tokenization of public sample ``sample_id``."""
        seed = int(hashlib.sha256(f"{self.tokenizer}/{sample_id}".encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng(seed)
        return rng.integers(0, self.vocab, size=int(rng.integers(6, 12)), dtype=np.int32)

    def _work(self, step: str, round_index: int, opts: CallOptions) -> CallEntry:
        """Start a call: log it, apply the script (delay / failure) and the base duration."""
        entry = self.log.begin(self.name, step, round_index)
        action = self.script.action(step, round_index)
        try:
            if action is not None:
                self._apply(action, opts)
            self._sleep(self.step_seconds, opts)
        except BaseException:
            self.log.end(entry, ok=False)
            raise
        return entry

    def _apply(self, action: tuple, opts: CallOptions) -> None:
        kind = action[0]
        if kind == "delay":
            self._sleep(float(action[1]), opts)
        elif kind == "unavailable":
            raise Unreachable(self.name, "connection refused (scripted)")
        elif kind == "unavailable_times":  # a restart: unreachable for the first n calls
            if self._failures.get(id(action), 0) < int(action[1]):
                self._failures[id(action)] = self._failures.get(id(action), 0) + 1
                raise Unreachable(self.name, "connection refused (restarting, scripted)")
        elif kind == "error":
            raise CallFailed(self.name, action[1], "scripted failure")
        elif kind == "crash":
            raise RuntimeError(f"{self.name}: simulated crash")

    @staticmethod
    def _sleep(seconds: float, opts: CallOptions) -> None:
        end = time.monotonic() + seconds
        while True:
            opts.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.01))

    def _progress(self, step: str, round_index: int, opts: CallOptions,
                  metrics: dict[str, float],
                  outcomes: SampleOutcomes | None = None) -> Iterator[ProgressUpdate]:
        entry = self._work(step, round_index, opts)
        try:
            yield ProgressUpdate(step, 1, 2)
            opts.check()
            done_metrics = {"compute_seconds": max(0.0, time.monotonic() - entry.started) * 0.9,
                            **metrics}
            yield ProgressUpdate(step, 2, 2, done_metrics, done=True, outcomes=outcomes)
        except BaseException:
            self.log.end(entry, ok=False)
            raise
        self.log.end(entry, ok=True)

    # -- the Protocol -----------------------------------------------------------------
    def describe(self, opts: CallOptions) -> ParticipantDescription:
        entry = self._work("describe", 0, opts)
        self.log.end(entry, ok=True)
        return ParticipantDescription(
            name=self.name, role=self.role, model=f"fake-model-{self.name}",
            tokenizer_fingerprint=self.fingerprint, tokenizer_name=self.tokenizer,
            vocab_size=self.vocab, public_samples=len(self.public_ids),
            private_samples=self.private if self.role == "client" else 0,
            latest_adapter_round=self.adapter_round)

    def train_local(self, run_id: str, round: int, epochs: int,
                    opts: CallOptions) -> Iterator[ProgressUpdate]:
        if self.role != "client":
            raise CallFailed(self.name, "FAILED_PRECONDITION", "the server has no private data")
        yield from self._progress("train_local", round, opts, {"loss": 2.0 / (1 + round)})
        self.updates += 1
        self.adapter_round = round

    def distill(self, run_id: str, round: int, strategy: str, kd_alpha: float,
                temperature: float, epochs: int, opts: CallOptions) -> Iterator[ProgressUpdate]:
        teachers = sorted(src for (r, src) in self.staged if r == round)
        # like the real participant: one public sample per teacher chosen, out of FAKE_PUBLIC
        metrics = {"loss": 1.5 / (1 + round), "teachers": float(len(teachers)),
                   "samples": float(FAKE_PUBLIC),
                   "distilled_fraction": min(len(teachers), FAKE_PUBLIC) / FAKE_PUBLIC,
                   **{f"selected/{t}": 1.0 for t in teachers}}
        yield from self._progress("distill", round, opts, metrics)
        self.updates += 1
        self.adapter_round = round

    def evaluate(self, run_id: str, round: int, split: str,
                 opts: CallOptions) -> Iterator[ProgressUpdate]:
        accuracy = min(1.0, 0.5 + 0.05 * self.updates)
        # per sample: the first accuracy × FAKE_EVAL samples right, the rest wrong
        right = int(accuracy * FAKE_EVAL + 0.5)  # (`round` is the round here)
        hits = [1.0 if i < right else 0.0 for i in range(FAKE_EVAL)]
        outcomes = outcomes_of([f"eval-{i}" for i in range(FAKE_EVAL)], accuracy=hits,
                               nll=[1.0] * FAKE_EVAL)
        yield from self._progress("evaluate", round, opts,
                                  {"accuracy": right / FAKE_EVAL, "nll": 1.0}, outcomes)

    def compute_knowledge(self, run_id: str, round: int, top_k: int, logit_dtype: str,
                          opts: CallOptions) -> ListStream:
        def chunks() -> Iterator[knowledge_pb2.KnowledgeChunk]:
            entry = self._work("compute_knowledge", round, opts)
            ok = False
            try:
                yield from chunk_knowledge(self._knowledge(top_k), {
                    "run_id": run_id, "round": round, "source": self.name,
                    "tokenizer_fingerprint": self.fingerprint, "top_k": top_k},
                    logit_dtype=logit_dtype, max_bytes=2048)
                ok = True
            finally:
                self.log.end(entry, ok=ok)

        return ListStream(chunks(), compute=None)

    def _knowledge(self, top_k: int) -> Iterator[KnowledgeSample]:
        for sample_id in self.public_ids:
            ids = self.tokens(sample_id)
            rng = np.random.default_rng(len(ids))
            positions = len(ids) - 1
            topk = np.argsort(rng.random((positions, self.vocab)), axis=1)[:, :top_k]
            topk = topk.astype(np.int32)
            logits = rng.standard_normal((positions, top_k)).astype(np.float32)
            yield KnowledgeSample(sample_id, ids, topk, logits, loss=float(len(ids)))

    def public_tokens(self, opts: CallOptions) -> Iterator[aligner_pb2.TargetTokens]:
        for sample_id in self.public_ids:
            opts.check()
            yield aligner_pb2.TargetTokens(sample_id=sample_id,
                                           token_ids=codec.encode(self.tokens(sample_id)))

    def receive_knowledge(self, chunks: Iterator[knowledge_pb2.KnowledgeChunk],
                          opts: CallOptions) -> ReceiveResult:
        entry = self._work("receive_knowledge", -1, opts)
        digest = hashlib.sha256()
        count, source, round_index = 0, "", -1
        try:
            def checked() -> Iterator[knowledge_pb2.KnowledgeChunk]:
                nonlocal source, round_index
                for chunk in chunks:
                    opts.check()
                    source, round_index = chunk.header.source, chunk.header.round
                    digest.update(chunk.SerializeToString(deterministic=True))
                    yield chunk

            for sample in iter_samples(checked(), vocab_size=self.vocab,
                                       fingerprint=self.fingerprint,
                                       known_sample_ids=set(self.public_ids)):
                if not np.array_equal(sample.token_ids, self.tokens(sample.sample_id)):
                    raise CallFailed(self.name, "INVALID_ARGUMENT",
                                     f"sample {sample.sample_id} is not in my tokenization")
                count += 1
        except BaseException:
            self.log.end(entry, ok=False)
            raise
        entry.round = round_index
        entry.step = f"receive_knowledge:{source}"
        self.staged[(round_index, source)] = digest.hexdigest()  # replaces: idempotent
        self.log.end(entry, ok=True)
        return ReceiveResult(count, digest.hexdigest())

    def fetch_adapter(self, round: int, opts: CallOptions, run_id: str = "") -> AdapterBlob:
        entry = self._work("fetch_adapter", round, opts)
        if self.adapter_round < 0:
            self.log.end(entry, ok=False)
            raise CallFailed(self.name, "NOT_FOUND", "no adapter saved yet")
        data = _adapter_bytes(float(self.updates + len(self.name)))
        self.log.end(entry, ok=True)
        return AdapterBlob(self.adapter_round, hashlib.sha256(data).hexdigest(), data)

    def push_adapter(self, round: int, data: bytes, opts: CallOptions) -> PushResult:
        entry = self._work("push_adapter", round, opts)
        self.pushed.append(data)
        self.log.end(entry, ok=True)
        return PushResult(1, hashlib.sha256(data).hexdigest())


def _adapter_bytes(value: float) -> bytes:
    """A one-tensor safetensors file (what an adapter looks like on the wire)."""
    from safetensors.numpy import save

    return save({"base_model.model.lora_A.weight": np.full((2, 3), value, dtype=np.float32)})


class FakeAligner:
    """Projects knowledge onto the destination's TargetTokens (which it insists on getting)."""

    def __init__(self, participants: list[FakeParticipant], log: CallLog,
                 script: Script | None = None) -> None:
        self.vocab = {p.fingerprint: p.vocab for p in participants}
        self.log = log
        self.script = script or Script()
        self.registered: set[str] = set()
        self.prepared: set[tuple[str, str]] = set()
        self.streams = 0
        self._failures = 0  # align_knowledge streams refused by ("unavailable_times", n)

    def ensure_tokenizer(self, fingerprint: str, tokenizer: str, opts: CallOptions) -> str:
        opts.check()
        self.registered.add(fingerprint)
        return _fingerprint(tokenizer) if tokenizer.startswith("fake-") else fingerprint

    def prepare(self, source_fingerprint: str, target_fingerprint: str, canonical: str,
                opts: CallOptions) -> float:
        opts.check()
        for fingerprint in (source_fingerprint, target_fingerprint):
            if fingerprint not in self.registered:
                raise CallFailed("aligner", "NOT_FOUND", f"unknown tokenizer {fingerprint[:12]}")
        self.prepared.add((source_fingerprint, target_fingerprint))
        return 0.0

    def align_knowledge(self, requests: Iterator[aligner_pb2.AlignKnowledgeRequest],
                        opts: CallOptions) -> Iterator[knowledge_pb2.KnowledgeChunk]:
        first = next(requests)
        if first.WhichOneof("payload") != "config":
            raise CallFailed("aligner", "INVALID_ARGUMENT", "the first message must be a config")
        config = first.config
        for fingerprint in (config.source_fingerprint, config.target_fingerprint):
            if fingerprint not in self.registered:
                raise CallFailed("aligner", "NOT_FOUND", f"unknown tokenizer {fingerprint[:12]}")
        self.streams += 1
        entry = self.log.begin("aligner", "align_knowledge", -1)
        ok = False
        try:
            action = self.script.action("align_knowledge", -1)
            if action is not None and action[0] == "unavailable":
                raise Unreachable("aligner", "connection refused (scripted)")
            if action is not None and action[0] == "unavailable_times":  # a restart
                if self._failures < int(action[1]):
                    self._failures += 1
                    raise Unreachable("aligner", "connection refused (restarting, scripted)")
            yield from self._project(config, requests, opts)
            ok = True
        finally:
            self.log.end(entry, ok=ok)

    def _project(self, config: aligner_pb2.AlignKnowledgeConfig,
                 requests: Iterator[aligner_pb2.AlignKnowledgeRequest],
                 opts: CallOptions) -> Iterator[knowledge_pb2.KnowledgeChunk]:
        assembler = SampleAssembler()
        target_vocab = self.vocab[config.target_fingerprint]
        for request in requests:
            opts.check()
            chunk = request.batch.chunk
            targets = {t.sample_id: t for t in request.batch.targets}
            parts = decode_chunk(chunk, vocab_size=self.vocab[config.source_fingerprint],
                                 fingerprint=config.source_fingerprint)
            for part in parts:
                if part.part_index == 0 and part.sample_id not in targets:
                    raise CallFailed("aligner", "INVALID_ARGUMENT",
                                     f"no target tokens for sample {part.sample_id}")
            projected = []
            for sample in assembler.feed(parts):
                ids = codec.decode(targets[sample.sample_id].token_ids, expect_dtype="int32")
                k = config.top_k or sample.top_k
                positions = len(ids) - 1
                topk = (np.arange(positions * k, dtype=np.int32).reshape(positions, k)
                        % target_vocab)
                logits = np.zeros((positions, k), dtype=np.float32)
                projected.append(KnowledgeSample(
                    sample.sample_id, np.array(ids), topk, logits, loss=sample.loss,
                    stats=SampleStats(positions, positions - 1, 1)))
            if projected:
                yield from chunk_knowledge(projected, {
                    "run_id": chunk.header.run_id, "round": chunk.header.round,
                    "source": chunk.header.source,
                    "tokenizer_fingerprint": config.target_fingerprint,
                    "top_k": config.top_k or chunk.header.top_k})
        assembler.finish()


@dataclass
class FakeFederation:
    """Fakes for every participant of a config, sharing one call log."""

    participants: dict[str, FakeParticipant]
    aligner: FakeAligner
    log: CallLog

    def connections(self):
        from fedmkt.federation.interfaces import Connections

        return Connections(participants=dict(self.participants), aligner=self.aligner)


def fake_federation(config, *, scripts: dict[str, Script] | None = None,
                    step_seconds: float = 0.0, public: int = 6,
                    log: CallLog | None = None) -> FakeFederation:
    """Fake participants (with distinct vocabularies) for ``config``'s participants."""
    log = log or CallLog()
    scripts = scripts or {}
    participants = {}
    for index, spec in enumerate(config.participants):
        participants[spec.name] = FakeParticipant(
            spec.name, spec.role, log=log, public=public, vocab=89 + 7 * index,
            script=scripts.get(spec.name), step_seconds=step_seconds)
    aligner = FakeAligner(list(participants.values()), log, scripts.get("aligner"))
    return FakeFederation(participants, aligner, log)
