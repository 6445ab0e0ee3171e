"""Knowledge pipes: source ``ComputeKnowledge`` → aligner ``AlignKnowledge`` → destination
``ReceiveKnowledge``, as a chain of generators with back-pressure.

The source stream is read once, in the caller's thread, and fed through a small bounded queue
to one pipe per destination (the server's knowledge goes to every client; a client's knowledge
to the server). Each pipe runs in its own thread: its request generator sends the aligner the
config first (source and destination fingerprints, so the projection lands on the destination's
own tokenization), then one batch per source chunk with the destination's ``TargetTokens`` of
the samples that chunk starts; the aligner's answers are handed straight to the destination's
client stream. Nothing holds the whole knowledge set: the queues hold a few chunks, the target
lookup only the destination tokens read ahead of the source's order.

A destination that fails is detached (the others go on); a source that fails fails every pipe.
The time the caller waits on the source counts as the source's model compute, unless the source
reported its own compute seconds.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from fedmkt.federation.errors import CallFailed, RunFailed
from fedmkt.federation.interfaces import CallOptions, ParticipantClient
from fedmkt.wire.v1 import aligner_pb2, knowledge_pb2, tensor_pb2, tokenizer_pb2

QUEUE_CHUNKS = 4  # chunks buffered per destination (1 MiB each at most)
MAX_LOOKAHEAD = 100_000  # destination token rows read ahead of the source order
_END = object()

CANONICAL = {"surface": tokenizer_pb2.CANONICAL_MODE_SURFACE,
             "fate": tokenizer_pb2.CANONICAL_MODE_FATE}
METHOD = {"dtw": aligner_pb2.SEQUENCE_ALIGNMENT_DTW,
          "offsets": aligner_pb2.SEQUENCE_ALIGNMENT_OFFSETS}
LOGIT_DTYPE = {"float16": tensor_pb2.DTYPE_FLOAT16, "bfloat16": tensor_pb2.DTYPE_BFLOAT16,
               "float32": tensor_pb2.DTYPE_FLOAT32}


@dataclass(frozen=True)
class AlignSettings:
    """How knowledge is aligned (from the federation config)."""

    top_k: int
    logit_dtype: str = "float16"
    canonical: str = "surface"
    method: str = "dtw"


@dataclass
class Destination:
    """One pipe's end: the participant that receives, its tokenizer and its call options."""

    name: str
    client: ParticipantClient
    fingerprint: str
    opts: CallOptions


@dataclass
class PipeResult:
    samples: int  # as committed by the destination
    digest: str
    aligned: int = 0  # positions projected from the teacher
    fallback: int = 0  # positions that fell back to a one-hot
    positions: int = 0
    chunks: int = 0
    bytes: int = 0


@dataclass
class FanOutResult:
    results: dict[str, PipeResult] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)
    source_error: BaseException | None = None
    source_compute: float = 0.0  # seconds of model compute on the source
    source_samples: int = 0
    source_work: dict[str, float] = field(default_factory=dict)  # its model work, if reported


class _SourceFailed(Exception):
    """Raised inside a pipe when the shared source stream failed (the source is to blame)."""


class TargetLookup:
    """The destination's ``TargetTokens`` by sample id, read lazily from its PublicTokens stream:
    rows are buffered only while the source sends samples in another order."""

    def __init__(self, stream: Iterator[aligner_pb2.TargetTokens], destination: str) -> None:
        self._stream = iter(stream)
        self._ahead: dict[str, aligner_pb2.TargetTokens] = {}
        self._destination = destination

    def take(self, sample_id: str) -> aligner_pb2.TargetTokens:
        found = self._ahead.pop(sample_id, None)
        if found is not None:
            return found
        for tokens in self._stream:
            if tokens.sample_id == sample_id:
                return tokens
            if len(self._ahead) >= MAX_LOOKAHEAD:
                break
            self._ahead[tokens.sample_id] = tokens
        raise RunFailed(
            f"sample {sample_id!r} of the knowledge stream is not in {self._destination}'s "
            "public data: do all participants use the same task, seed and sample caps?"
        )


class _Feed:
    """Bounded queue from the source pump to one pipe; ``closed`` when the pipe has ended."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self.closed = threading.Event()

    def put(self, item: object, opts: CallOptions) -> bool:
        """Hand ``item`` to the pipe, waiting while its queue is full; False if it ended."""
        while not self.closed.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                if opts.scope.cancelled:
                    return False
        return False

    def get(self, opts: CallOptions) -> object:
        while True:
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                opts.check()


class _Pipe:
    """One destination's chain: requests(feed) → aligner → counted → receive_knowledge."""

    def __init__(self, dest: Destination, feed: _Feed, aligner,
                 config: aligner_pb2.AlignKnowledgeConfig,
                 on_progress: Callable[[str, int], None]) -> None:
        self.dest = dest
        self.feed = feed
        self.aligner = aligner
        self.config = config
        self.on_progress = on_progress
        self.stats = PipeResult(samples=0, digest="")
        self.result: PipeResult | None = None
        self.error: BaseException | None = None
        self._cause: BaseException | None = None  # the first failure inside the chain

    def run(self) -> None:
        try:
            lookup = TargetLookup(self.dest.client.public_tokens(self.dest.opts), self.dest.name)
            aligned = self.aligner.align_knowledge(self._requests(lookup),
                                                   self.dest.opts.for_who("aligner"))
            received = self.dest.client.receive_knowledge(self._counted(aligned), self.dest.opts)
            self.stats.samples, self.stats.digest = received.samples, received.digest
            self.result = self.stats
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            self.error = self._cause or exc
        finally:
            self.feed.closed.set()

    def _requests(self, lookup: TargetLookup) -> Iterator[aligner_pb2.AlignKnowledgeRequest]:
        try:
            yield aligner_pb2.AlignKnowledgeRequest(config=self.config)
            while True:
                item = self.feed.get(self.dest.opts)
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise _SourceFailed(str(item)) from item
                targets = [lookup.take(s.sample_id) for s in item.samples if s.part_index == 0]
                yield aligner_pb2.AlignKnowledgeRequest(
                    batch=aligner_pb2.AlignKnowledgeBatch(chunk=item, targets=targets))
        except BaseException as exc:
            self._cause = self._cause or exc
            raise

    def _counted(self, chunks: Iterator[knowledge_pb2.KnowledgeChunk]
                 ) -> Iterator[knowledge_pb2.KnowledgeChunk]:
        try:
            for chunk in chunks:
                self.stats.chunks += 1
                self.stats.bytes += chunk.ByteSize()
                for sample in chunk.samples:
                    if sample.last_part:
                        self.stats.positions += sample.stats.positions
                        self.stats.aligned += sample.stats.aligned
                        self.stats.fallback += sample.stats.fallback
                        self.stats.samples += 1
                        self.on_progress(self.dest.name, self.stats.samples)
                yield chunk
        except BaseException as exc:
            self._cause = self._cause or exc
            raise


def fan_out(
    *,
    source: ParticipantClient,
    source_fingerprint: str,
    run_id: str,
    round: int,
    settings: AlignSettings,
    aligner,
    destinations: list[Destination],
    source_opts: CallOptions,
    on_progress: Callable[[str, int], None] = lambda name, done: None,
) -> FanOutResult:
    """Stream ``source``'s knowledge of (run, round) through the aligner to every destination.

    Returns per destination its ``PipeResult`` or failure; ``source_error`` when the source
    stream failed (then every destination failed too).
    """
    out = FanOutResult()
    pipes = []
    for dest in destinations:
        config = aligner_pb2.AlignKnowledgeConfig(
            source_fingerprint=source_fingerprint, target_fingerprint=dest.fingerprint,
            canonical=CANONICAL[settings.canonical], method=METHOD[settings.method],
            top_k=settings.top_k, logit_dtype=LOGIT_DTYPE[settings.logit_dtype])
        pipe = _Pipe(dest, _Feed(), aligner, config, on_progress)
        thread = threading.Thread(target=pipe.run, name=f"pipe-{dest.name}", daemon=True)
        pipes.append((pipe, thread))
        thread.start()
    try:
        out.source_compute, out.source_samples, out.source_work = _pump(
            source, run_id, round, settings, [p.feed for p, _ in pipes], source_opts)
    except BaseException as exc:  # noqa: BLE001 - the source failed: tell every pipe
        out.source_error = exc
        for pipe, _ in pipes:
            pipe.feed.put(exc, source_opts)
    for pipe, thread in pipes:
        _join(thread, pipe.dest.opts)
        if pipe.result is not None:
            out.results[pipe.dest.name] = pipe.result
        else:
            error = pipe.error or CallFailed(pipe.dest.name, "INTERNAL", "pipe did not finish")
            if isinstance(error, _SourceFailed) and out.source_error is not None:
                error = out.source_error
            out.failures[pipe.dest.name] = error
    return out


def _pump(source: ParticipantClient, run_id: str, round: int, settings: AlignSettings,
          feeds: list[_Feed], opts: CallOptions) -> tuple[float, int, dict[str, float]]:
    """Read the source stream once, handing every chunk to every open pipe. Returns the
    source's compute seconds, how many samples it sent, and the model work it reported."""
    stream = source.compute_knowledge(run_id, round, settings.top_k, settings.logit_dtype, opts)
    waited, samples = 0.0, 0
    chunks = iter(stream)
    while True:
        started = time.perf_counter()
        chunk = next(chunks, _END)
        waited += time.perf_counter() - started
        if chunk is _END:
            break
        samples += sum(1 for s in chunk.samples if s.last_part)
        open_feeds = [f for f in feeds if not f.closed.is_set()]
        if not open_feeds:
            _close(chunks)
            break
        for feed in open_feeds:
            feed.put(chunk, opts)
    for feed in feeds:
        feed.put(_END, opts)
    reported = stream.compute_seconds()
    work = getattr(stream, "work_metrics", dict)()
    return (waited if reported is None else reported), samples, work


def _close(iterator: Iterator) -> None:
    close = getattr(iterator, "close", None) or getattr(iterator, "cancel", None)
    if close is not None:
        close()


def _join(thread: threading.Thread, opts: CallOptions) -> None:
    """Wait for a pipe; past its deadline (plus a grace period) cancel its calls."""
    while thread.is_alive():
        timeout = None if opts.deadline is None else opts.deadline - time.monotonic() + 10.0
        thread.join(timeout if timeout is None else max(timeout, 0.1))
        if thread.is_alive() and opts.deadline is not None and time.monotonic() > opts.deadline:
            opts.scope.cancel("deadline exceeded")
            thread.join(10.0)
            return
