"""gRPC ``fedmkt.v1.ParticipantService``: translates between the wire and ``Participant``.

One servicer for both roles (the core knows its role). Long calls (TrainLocal, Distill,
Evaluate) run the core method on a worker thread that feeds a queue of ``Progress`` messages;
when the caller cancels the RPC (or its deadline passes) the cancel event is set and the core
stops at the next batch, restoring its adapter. The final message's metrics include
``compute_seconds`` (time spent in the core method); ComputeKnowledge reports the same as the
trailing metadata ``fedmkt-compute-seconds``. Knowledge goes out in ``chunk_knowledge`` chunks,
adapters in chunks of at most 1 MiB. Errors raised by the core map to gRPC statuses
(``services.common.map_errors``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Gauge

from fedmkt.data.outcomes import SampleOutcomes
from fedmkt.errors import InvalidArgument, Unavailable
from fedmkt.participant.core import Participant
from fedmkt.participant.training import Cancelled
from fedmkt.wire import codec
from fedmkt.wire.chunking import chunk_knowledge
from fedmkt.wire.outcomes import outcomes_to_pb
from fedmkt.wire.v1 import (
    aligner_pb2,
    participant_pb2,
    participant_pb2_grpc,
    tensor_pb2,
    tokenizer_pb2,
)
from services.common import map_errors

log = logging.getLogger("fedmkt.participant")

ADAPTER_CHUNK_BYTES = 1 << 20
MAX_ADAPTER_BYTES = 1 << 30
PUBLIC_TOKENS_PER_CHUNK = 256
RUN_ID_METADATA = "fedmkt-run-id"
ROUND_METADATA = "fedmkt-round"
COMPUTE_SECONDS_METADATA = "fedmkt-compute-seconds"  # trailer of ComputeKnowledge
WORK_METADATA = "fedmkt-work"  # trailer of ComputeKnowledge: JSON {"work/…": n, "floor/…": n}

ROLES = {"server": participant_pb2.ROLE_SERVER, "client": participant_pb2.ROLE_CLIENT}
LOGIT_DTYPES = {
    tensor_pb2.DTYPE_UNSPECIFIED: "",
    tensor_pb2.DTYPE_FLOAT16: "float16",
    tensor_pb2.DTYPE_BFLOAT16: "bfloat16",
    tensor_pb2.DTYPE_FLOAT32: "float32",
}

STEP_LOSS = Gauge("fedmkt_participant_loss", "Mean loss of the last finished call",
                  ["participant", "step"])
ROUND = Gauge("fedmkt_participant_round", "Round of the last finished call", ["participant"])
MODEL_WORK = Counter("fedmkt_participant_model_work_total",
                     "Model work of finished calls (tokens forward/backward, LM-head positions): "
                     "what was done and the algorithm's floor", ["participant", "step", "kind",
                                                                 "measure"])
KNOWLEDGE_SAMPLES = Counter("fedmkt_participant_knowledge_samples_total",
                            "Knowledge samples sent or staged", ["participant", "direction"])

Work = Callable[[Callable[[str, int, int, dict[str, float]], None], threading.Event],
                dict[str, float]]


def _run_ref(request: Any) -> tuple[str, int]:
    if not request.HasField("run"):
        raise InvalidArgument("the request needs run (run_id and round)")
    return request.run.run_id, request.run.round


def _progress(step: str, completed: int, total: int, metrics: dict[str, float], *,
              done: bool = False, message: str = "",
              outcomes: SampleOutcomes | None = None) -> participant_pb2.Progress:
    return participant_pb2.Progress(step=step, completed=completed, total=total,
                                    metrics={k: float(v) for k, v in metrics.items()},
                                    done=done, message=message,
                                    outcomes=None if outcomes is None else outcomes_to_pb(outcomes))


class ParticipantServicer(participant_pb2_grpc.ParticipantServiceServicer):
    """Thin translation layer over one ``Participant``."""

    def __init__(self, participant: Participant) -> None:
        self.participant = participant
        self.name = participant.config.name
        self._active: set[threading.Event] = set()
        self._active_lock = threading.Lock()
        self._stopping = False

    def cancel_all(self) -> None:
        """Ask every running long call to stop (used on shutdown). Their callers are answered
        UNAVAILABLE (this participant is going away; call again when it is back), not
        CANCELLED, which would say that the caller itself gave up."""
        self._stopping = True
        with self._active_lock:
            for event in self._active:
                event.set()

    # ------------------------------------------------------------------ progress streams

    def _stream(self, context: grpc.ServicerContext, step: str, round_index: int,
                work: Work) -> Iterator[participant_pb2.Progress]:
        """Run ``work(progress, cancel)`` on a worker thread; yield its progress, then a final
        message with ``done`` and the metrics (``work`` returns them, or the metrics and the
        per-sample outcomes of an evaluation). Errors are re-raised here (mapped to statuses)."""
        updates: queue.Queue = queue.Queue()
        cancel = threading.Event()
        with self._active_lock:
            self._active.add(cancel)
        context.add_callback(cancel.set)  # runs when the RPC ends, cancelled or not

        def report(name: str, completed: int, total: int, metrics: dict[str, float]) -> None:
            updates.put(("progress", _progress(name, completed, total, metrics)))

        def run() -> None:
            try:
                started = time.perf_counter()
                result = work(report, cancel)
                metrics, outcomes = result if isinstance(result, tuple) else (result, None)
                metrics["compute_seconds"] = time.perf_counter() - started
                updates.put(("done", (metrics, outcomes)))
            except BaseException as exc:  # noqa: BLE001 - handed to the RPC thread
                updates.put(("error", exc))

        worker = threading.Thread(target=run, name=f"{step}-worker", daemon=True)
        worker.start()
        try:
            while True:
                kind, payload = updates.get()
                if kind == "progress":
                    yield payload
                elif kind == "done":
                    metrics, outcomes = payload
                    self._record(step, round_index, metrics)
                    yield _progress(step, 1, 1, metrics, done=True, outcomes=outcomes)
                    return
                else:
                    if isinstance(payload, Cancelled) and not context.is_active():
                        log.info("%s: %s cancelled by the caller", self.name, step)
                        return
                    if isinstance(payload, Cancelled) and self._stopping:
                        raise Unavailable(f"{self.name} is shutting down during {step}; call "
                                          "again when it is back") from payload
                    raise payload
        finally:
            cancel.set()  # a caller that went away stops the worker at the next batch
            with self._active_lock:
                self._active.discard(cancel)

    def _record(self, step: str, round_index: int, metrics: dict[str, float]) -> None:
        ROUND.labels(self.name).set(round_index)
        if "loss" in metrics:
            STEP_LOSS.labels(self.name, step).set(metrics["loss"])
        for key, value in metrics.items():
            kind, _, measure = key.partition("/")
            if kind in ("work", "floor") and measure and value >= 0:
                MODEL_WORK.labels(self.name, step, "done" if kind == "work" else "floor",
                                  measure).inc(value)

    # ------------------------------------------------------------------ RPCs

    @map_errors
    def Describe(self, request, context):
        d = self.participant.describe()
        info = d.tokenizer
        return participant_pb2.ParticipantInfo(
            name=d.name, role=ROLES[d.role], model=d.model,
            tokenizer=tokenizer_pb2.TokenizerInfo(
                fingerprint=info.fingerprint, vocab_size=info.vocab_size, name=info.name,
                special_token_ids=list(info.special_token_ids),
                word_boundary_marker=info.word_boundary_marker),
            trainable_parameters=d.trainable_parameters, total_parameters=d.total_parameters,
            device=d.device, dtype=d.dtype, public_samples=d.public_samples,
            private_samples=d.private_samples, latest_adapter_round=d.latest_adapter_round,
        )

    @map_errors
    def TrainLocal(self, request, context):
        run_id, round_index = _run_ref(request)

        def work(progress, cancel):
            return self.participant.train_local(run_id, round_index, request.epochs,
                                                progress=progress, cancel=cancel)

        yield from self._stream(context, "train_local", round_index, work)

    @map_errors
    def Distill(self, request, context):
        run_id, round_index = _run_ref(request)

        def work(progress, cancel):
            return self.participant.distill(
                run_id, round_index, strategy=request.strategy,
                kd_alpha=request.kd_alpha if request.HasField("kd_alpha") else None,
                temperature=request.temperature if request.HasField("temperature") else None,
                epochs=request.epochs, progress=progress,
                cancel=cancel)

        yield from self._stream(context, "distill", round_index, work)

    @map_errors
    def Evaluate(self, request, context):
        run_id, round_index = _run_ref(request)

        def work(progress, cancel):
            return self.participant.evaluate_samples(run_id, request.split or "eval",
                                                     progress=progress, cancel=cancel)

        yield from self._stream(context, "evaluate", round_index, work)

    @map_errors
    def ComputeKnowledge(self, request, context):
        run_id, round_index = _run_ref(request)
        if request.logit_dtype not in LOGIT_DTYPES:
            raise InvalidArgument(f"logit_dtype must be a float dtype, got {request.logit_dtype}")
        out = self.participant.compute_knowledge(run_id, round_index, request.top_k,
                                                 LOGIT_DTYPES[request.logit_dtype])
        timed = _Timed(out.samples)
        try:
            for chunk in chunk_knowledge(timed, out.header, logit_dtype=out.logit_dtype):
                KNOWLEDGE_SAMPLES.labels(self.name, "sent").inc(len(chunk.samples))
                yield chunk
            work = self.participant.last_knowledge_work.metrics()
            self._record("compute_knowledge", round_index, work)
            context.set_trailing_metadata(((COMPUTE_SECONDS_METADATA, f"{timed.seconds:.3f}"),
                                           (WORK_METADATA, json.dumps(work))))
        finally:
            out.samples.close()  # releases the participant if the caller went away

    @map_errors
    def PublicTokens(self, request, context):
        batch = []
        for sample_id, ids in self.participant.public_tokens():
            batch.append(aligner_pb2.TargetTokens(sample_id=sample_id,
                                                  token_ids=codec.encode(ids, "int32")))
            if len(batch) == PUBLIC_TOKENS_PER_CHUNK:
                yield participant_pb2.PublicTokensChunk(samples=batch)
                batch = []
        if batch:
            yield participant_pb2.PublicTokensChunk(samples=batch)

    @map_errors
    def ReceiveKnowledge(self, request_iterator, context):
        run_id, round_index, chunks = _expected_run(request_iterator, context)
        info = self.participant.receive_knowledge(run_id, round_index, chunks)
        KNOWLEDGE_SAMPLES.labels(self.name, "staged").inc(info.samples)
        return participant_pb2.ReceiveKnowledgeResponse(samples=info.samples, digest=info.digest)

    @map_errors
    def FetchAdapter(self, request, context):
        blob = self.participant.fetch_adapter(request.round, request.run_id)
        data = blob.data
        for start in range(0, max(len(data), 1), ADAPTER_CHUNK_BYTES):
            piece = data[start : start + ADAPTER_CHUNK_BYTES]
            last = start + ADAPTER_CHUNK_BYTES >= len(data)
            yield participant_pb2.AdapterChunk(
                round=blob.round, digest=blob.digest, data=piece, last=last,
                peft_config_json=blob.peft_config if last else "",
                base_model=blob.base_model if last else "")

    @map_errors
    def PushAdapter(self, request_iterator, context):
        round_index, data = _collect_adapter(request_iterator)
        tensors, digest = self.participant.push_adapter(round_index, data)
        return participant_pb2.PushAdapterResponse(tensors=tensors, digest=digest)


class _Timed:
    """Iterates ``items`` and adds up the seconds spent producing them (not sending them)."""

    def __init__(self, items: Iterator) -> None:
        self.items = items
        self.seconds = 0.0

    def __iter__(self) -> Iterator:
        while True:
            started = time.perf_counter()
            try:
                item = next(self.items)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - started
            yield item


def _expected_run(request_iterator, context) -> tuple[str, int, Iterator]:
    """The run and round a ReceiveKnowledge stream must belong to: from the call's metadata
    (``fedmkt-run-id``, ``fedmkt-round``) when the caller sent them, else from the first
    chunk's header (every later chunk must then match it). Returns the full chunk stream."""
    metadata = dict(context.invocation_metadata() or ())
    first = next(request_iterator, None)
    if first is None:
        raise InvalidArgument("the knowledge stream is empty: no chunk was sent")
    run_id = metadata.get(RUN_ID_METADATA) or first.header.run_id
    raw_round = metadata.get(ROUND_METADATA)
    try:
        round_index = int(raw_round) if raw_round is not None else first.header.round
    except ValueError:
        raise InvalidArgument(f"metadata {ROUND_METADATA} must be an integer, got "
                              f"{raw_round!r}") from None

    def chunks() -> Iterator:
        yield first
        yield from request_iterator

    return run_id, round_index, chunks()


def _collect_adapter(request_iterator) -> tuple[int, bytes]:
    """Join AdapterChunk messages: same round and digest on every chunk, ``last`` on the final
    one, at most 1 GiB, sha256 equal to the announced digest."""
    parts: list[bytes] = []
    size, round_index, digest, ended = 0, None, None, False
    for chunk in request_iterator:
        if ended:
            raise InvalidArgument("adapter chunk after the one marked last")
        if round_index is None:
            round_index, digest = chunk.round, chunk.digest
        elif (chunk.round, chunk.digest) != (round_index, digest):
            raise InvalidArgument("adapter chunks disagree on round or digest")
        size += len(chunk.data)
        if size > MAX_ADAPTER_BYTES:
            raise InvalidArgument(f"adapter larger than {MAX_ADAPTER_BYTES} bytes")
        parts.append(chunk.data)
        ended = chunk.last
    if round_index is None or not ended:
        raise InvalidArgument("incomplete adapter stream: the chunk marked last never came")
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != digest:
        raise InvalidArgument("adapter digest does not match the sha256 of the received bytes")
    return round_index, data
