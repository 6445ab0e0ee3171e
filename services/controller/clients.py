"""gRPC implementations of the controller's Protocols (``fedmkt.federation.interfaces``).

``GrpcParticipant`` and ``GrpcAligner`` translate calls into stub calls with the step's deadline
as the gRPC timeout, register every in-flight call on the step's cancel scope (cancelling the
scope cancels the RPC), and turn ``grpc.RpcError`` into ``CallFailed`` subclasses naming the
service. ``connect(config)`` opens one channel per endpoint (TLS/mTLS when the config has
``tls``) and returns the run's ``Connections``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from fedmkt.config import FederationConfig, TlsConfig
from fedmkt.errors import InvalidArgument
from fedmkt.federation.errors import CallCancelled, CallFailed, DeadlineMissed, Unreachable
from fedmkt.federation.interfaces import (
    AdapterBlob,
    CallOptions,
    Connections,
    ParticipantDescription,
    ProgressUpdate,
    PushResult,
    ReceiveResult,
)
from fedmkt.federation.pipe import LOGIT_DTYPE
from fedmkt.models.adapters import check_base_model_name, check_peft_config
from fedmkt.wire.errors import WireError
from fedmkt.wire.outcomes import outcomes_from_pb
from fedmkt.wire.v1 import (
    aligner_pb2,
    aligner_pb2_grpc,
    knowledge_pb2,
    participant_pb2,
    participant_pb2_grpc,
    tokenizer_pb2,
)
from services.common import KEEPALIVE_TIME_MS

MAX_MESSAGE_BYTES = 64 << 20
ADAPTER_CHUNK_BYTES = 1 << 20
MAX_ADAPTER_BYTES = 1 << 30
COMPUTE_SECONDS_METADATA = "fedmkt-compute-seconds"
WORK_METADATA = "fedmkt-work"
RUN_ID_METADATA = "fedmkt-run-id"
ROUND_METADATA = "fedmkt-round"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                   "chat_template.jinja")
ROLE_NAMES = {participant_pb2.ROLE_SERVER: "server", participant_pb2.ROLE_CLIENT: "client"}

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),  # servers accept this (services.common)
    ("grpc.keepalive_permit_without_calls", 0),
]


def call_failed(who: str, error: grpc.RpcError) -> CallFailed:
    """The ``CallFailed`` for an RPC error (code and details kept)."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else "") or str(error)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineMissed(who, details)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unreachable(who, details)
    if code == grpc.StatusCode.CANCELLED:
        return CallCancelled(who, details)
    return CallFailed(who, code.name if code is not None else "UNKNOWN", details)


class _Tracked:
    """Registers a cancellable call on the scope while it runs."""

    def __init__(self, opts: CallOptions, call: Any) -> None:
        self.opts = opts
        self.handle = opts.scope.on_cancel(call.cancel)

    def release(self) -> None:
        self.opts.scope.remove(self.handle)


def _stream(who: str, opts: CallOptions, start: Callable[[float | None], Any],
            on_end: Callable[[Any], None] | None = None) -> Iterator:
    """Iterate a server-streaming call, translating errors and honouring the scope."""
    call = start(opts.remaining())
    tracked = _Tracked(opts, call)
    try:
        yield from call
        if on_end is not None:
            on_end(call)
    except grpc.RpcError as exc:
        if opts.scope.cancelled:
            raise CallCancelled(who, opts.scope.reason) from exc
        raise call_failed(who, exc) from exc
    finally:
        tracked.release()
        call.cancel()  # no-op when finished; stops the server if the consumer went away


def _unary(who: str, opts: CallOptions, future_call: Callable[[float | None], Any]) -> Any:
    """Run a call through its ``.future`` form so the scope can cancel it."""
    future = future_call(opts.remaining())
    tracked = _Tracked(opts, future)
    try:
        return future.result()
    except grpc.FutureCancelledError as exc:
        raise CallCancelled(who, opts.scope.reason or "cancelled") from exc
    except grpc.RpcError as exc:
        if opts.scope.cancelled:
            raise CallCancelled(who, opts.scope.reason) from exc
        raise call_failed(who, exc) from exc
    finally:
        tracked.release()


def _run_ref(run_id: str, round_index: int) -> participant_pb2.RunRef:
    return participant_pb2.RunRef(run_id=run_id, round=round_index)


def _progress(message: participant_pb2.Progress, who: str = "") -> ProgressUpdate:
    try:
        outcomes = outcomes_from_pb(message.outcomes)
    except WireError as exc:  # the participant sent what it must not: a failed call
        raise CallFailed(who, "DATA_LOSS", str(exc)) from exc
    return ProgressUpdate(step=message.step, completed=message.completed, total=message.total,
                          metrics=dict(message.metrics), done=message.done,
                          message=message.message, outcomes=outcomes)


class GrpcKnowledgeStream:
    """ComputeKnowledge chunks; ``compute_seconds()`` and ``work_metrics()`` from the trailing
    metadata, if sent (a malformed trailer is ignored: it only feeds the report)."""

    def __init__(self, who: str, opts: CallOptions, start: Callable[[float | None], Any]):
        self._who, self._opts, self._start = who, opts, start
        self._compute: float | None = None
        self._work: dict[str, float] = {}

    def __iter__(self) -> Iterator[knowledge_pb2.KnowledgeChunk]:
        return _stream(self._who, self._opts, self._start, on_end=self._read_trailer)

    def _read_trailer(self, call: Any) -> None:
        for key, value in call.trailing_metadata() or ():
            if key == COMPUTE_SECONDS_METADATA:
                try:
                    seconds = float(value)
                except ValueError:
                    continue
                if math.isfinite(seconds) and seconds >= 0:
                    self._compute = seconds
            elif key == WORK_METADATA:
                self._work = parse_work(value)

    def compute_seconds(self) -> float | None:
        return self._compute

    def work_metrics(self) -> dict[str, float]:
        return dict(self._work)


MAX_WORK_TRAILER = 4096


def parse_work(value: str) -> dict[str, float]:
    """The ``work/…`` and ``floor/…`` counts of a ComputeKnowledge trailer: only known names
    with finite, non-negative numbers; anything else gives {}."""
    from fedmkt.models.work import FIELDS

    if not isinstance(value, str) or len(value) > MAX_WORK_TRAILER:
        return {}
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    allowed = {f"{kind}/{name}" for kind in ("work", "floor") for name in FIELDS}
    if not isinstance(data, dict) or not set(data) <= allowed:
        return {}
    out = {}
    for key, number in data.items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            return {}
        if not math.isfinite(number) or number < 0:
            return {}
        out[key] = float(number)
    return out


class GrpcParticipant:
    """A ``ParticipantClient`` over a ``ParticipantService`` channel."""

    def __init__(self, name: str, channel: grpc.Channel) -> None:
        self.name = name
        self.stub = participant_pb2_grpc.ParticipantServiceStub(channel)

    def describe(self, opts: CallOptions) -> ParticipantDescription:
        info = _unary(self.name, opts, lambda t: self.stub.Describe.future(
            participant_pb2.DescribeRequest(), timeout=t))
        return ParticipantDescription(
            name=info.name, role=ROLE_NAMES.get(info.role, "unspecified"), model=info.model,
            tokenizer_fingerprint=info.tokenizer.fingerprint, tokenizer_name=info.tokenizer.name,
            vocab_size=info.tokenizer.vocab_size, public_samples=info.public_samples,
            private_samples=info.private_samples,
            latest_adapter_round=info.latest_adapter_round,
            trainable_parameters=info.trainable_parameters,
            total_parameters=info.total_parameters, device=info.device)

    def train_local(self, run_id: str, round: int, epochs: int,
                    opts: CallOptions) -> Iterator[ProgressUpdate]:
        request = participant_pb2.TrainLocalRequest(run=_run_ref(run_id, round), epochs=epochs)
        for message in _stream(self.name, opts,
                               lambda t: self.stub.TrainLocal(request, timeout=t)):
            yield _progress(message, self.name)

    def distill(self, run_id: str, round: int, strategy: str, kd_alpha: float,
                temperature: float, epochs: int, opts: CallOptions) -> Iterator[ProgressUpdate]:
        request = participant_pb2.DistillRequest(
            run=_run_ref(run_id, round), strategy=strategy, kd_alpha=kd_alpha,
            temperature=temperature, epochs=epochs)
        for message in _stream(self.name, opts, lambda t: self.stub.Distill(request, timeout=t)):
            yield _progress(message, self.name)

    def evaluate(self, run_id: str, round: int, split: str,
                 opts: CallOptions) -> Iterator[ProgressUpdate]:
        request = participant_pb2.EvaluateRequest(run=_run_ref(run_id, round), split=split)
        for message in _stream(self.name, opts, lambda t: self.stub.Evaluate(request, timeout=t)):
            yield _progress(message, self.name)

    def compute_knowledge(self, run_id: str, round: int, top_k: int, logit_dtype: str,
                          opts: CallOptions) -> GrpcKnowledgeStream:
        request = participant_pb2.ComputeKnowledgeRequest(
            run=_run_ref(run_id, round), top_k=top_k, logit_dtype=LOGIT_DTYPE[logit_dtype])
        return GrpcKnowledgeStream(self.name, opts,
                                   lambda t: self.stub.ComputeKnowledge(request, timeout=t))

    def public_tokens(self, opts: CallOptions) -> Iterator[aligner_pb2.TargetTokens]:
        for chunk in _stream(self.name, opts, lambda t: self.stub.PublicTokens(
                participant_pb2.PublicTokensRequest(), timeout=t)):
            yield from chunk.samples

    def receive_knowledge(self, chunks: Iterator[knowledge_pb2.KnowledgeChunk],
                          opts: CallOptions) -> ReceiveResult:
        first = next(chunks, None)
        if first is None:
            raise CallFailed(self.name, "FAILED_PRECONDITION", "no knowledge to deliver")

        def stream() -> Iterator[knowledge_pb2.KnowledgeChunk]:
            yield first
            yield from chunks

        metadata = ((RUN_ID_METADATA, first.header.run_id),
                    (ROUND_METADATA, str(first.header.round)))
        response = _unary(self.name, opts, lambda t: self.stub.ReceiveKnowledge.future(
            stream(), timeout=t, metadata=metadata))
        return ReceiveResult(response.samples, response.digest)

    def fetch_adapter(self, round: int, opts: CallOptions, run_id: str = "") -> AdapterBlob:
        parts, size, last = [], 0, None
        for chunk in _stream(self.name, opts, lambda t: self.stub.FetchAdapter(
                participant_pb2.FetchAdapterRequest(round=round, run_id=run_id), timeout=t)):
            size += len(chunk.data)
            if size > MAX_ADAPTER_BYTES:
                raise CallFailed(self.name, "RESOURCE_EXHAUSTED", "adapter larger than 1 GiB")
            parts.append(chunk.data)
            last = chunk
        if last is None or not last.last:
            raise CallFailed(self.name, "DATA_LOSS", "adapter stream ended before its last chunk")
        data = b"".join(parts)
        if hashlib.sha256(data).hexdigest() != last.digest:
            raise CallFailed(self.name, "DATA_LOSS", "adapter bytes do not match their digest")
        peft_config, base_model = last.peft_config_json, last.base_model
        try:
            if peft_config:
                check_peft_config(peft_config)
            check_base_model_name(base_model)
        except InvalidArgument as exc:
            raise CallFailed(self.name, "DATA_LOSS", f"adapter: {exc}") from exc
        return AdapterBlob(last.round, last.digest, data, peft_config, base_model)

    def push_adapter(self, round: int, data: bytes, opts: CallOptions) -> PushResult:
        digest = hashlib.sha256(data).hexdigest()

        def chunks() -> Iterator[participant_pb2.AdapterChunk]:
            for start in range(0, max(len(data), 1), ADAPTER_CHUNK_BYTES):
                yield participant_pb2.AdapterChunk(
                    round=round, digest=digest, data=data[start:start + ADAPTER_CHUNK_BYTES],
                    last=start + ADAPTER_CHUNK_BYTES >= len(data))

        response = _unary(self.name, opts,
                          lambda t: self.stub.PushAdapter.future(chunks(), timeout=t))
        return PushResult(response.tensors, response.digest)


class GrpcAligner:
    """An ``AlignerClient`` over an ``AlignerService`` channel."""

    who = "aligner"

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = aligner_pb2_grpc.AlignerServiceStub(channel)

    def ensure_tokenizer(self, fingerprint: str, tokenizer: str, opts: CallOptions) -> str:
        try:
            info = _unary(self.who, opts, lambda t: self.stub.GetTokenizer.future(
                aligner_pb2.GetTokenizerRequest(
                    tokenizer=tokenizer_pb2.TokenizerRef(fingerprint=fingerprint)), timeout=t))
            return info.fingerprint
        except CallFailed as exc:
            if exc.code != "NOT_FOUND":
                raise
        request = registration_request(tokenizer)
        info = _unary(self.who, opts,
                      lambda t: self.stub.RegisterTokenizer.future(request, timeout=t))
        return info.fingerprint

    def prepare(self, source_fingerprint: str, target_fingerprint: str, canonical: str,
                opts: CallOptions) -> float:
        from fedmkt.federation.pipe import CANONICAL

        request = aligner_pb2.GetVocabMapRequest(
            source=tokenizer_pb2.TokenizerRef(fingerprint=source_fingerprint),
            target=tokenizer_pb2.TokenizerRef(fingerprint=target_fingerprint),
            canonical=CANONICAL[canonical])
        response = _unary(self.who, opts,
                          lambda t: self.stub.GetVocabMap.future(request, timeout=t))
        return 0.0 if response.from_cache else response.build_seconds

    def align_knowledge(self, requests: Iterator[aligner_pb2.AlignKnowledgeRequest],
                        opts: CallOptions) -> Iterator[knowledge_pb2.KnowledgeChunk]:
        for response in _stream(self.who, opts,
                                lambda t: self.stub.AlignKnowledge(requests, timeout=t)):
            yield response.chunk


def registration_request(tokenizer: str) -> aligner_pb2.RegisterTokenizerRequest:
    """How to register ``tokenizer``: a builtin name, or the files of a tokenizer (or model)
    folder on this machine."""
    from fedmkt.models.tokenizers import BUILTIN_TOKENIZERS

    if tokenizer in BUILTIN_TOKENIZERS:
        return aligner_pb2.RegisterTokenizerRequest(builtin=tokenizer)
    folder = Path(tokenizer)
    if not folder.is_dir():
        from fedmkt.models.registry import BUILTIN_MODELS, builtin_model_path

        if tokenizer in BUILTIN_MODELS:
            folder = builtin_model_path(tokenizer)
    files = [tokenizer_pb2.TokenizerFile(name=name, content=(folder / name).read_bytes())
             for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not files:
        raise CallFailed("aligner", "FAILED_PRECONDITION",
                         f"cannot register tokenizer {tokenizer!r}: not a builtin tokenizer and "
                         "no tokenizer files found there; set participants[].tokenizer")
    return aligner_pb2.RegisterTokenizerRequest(name=folder.name, files=files)


def open_channel(endpoint: str, tls: TlsConfig | None) -> grpc.Channel:
    """A channel to ``endpoint`` (plain, or TLS/mTLS with the config's PEM files)."""
    if tls is None:
        return grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(tls.ca).read_bytes(),
        private_key=Path(tls.key).read_bytes() if tls.key else None,
        certificate_chain=Path(tls.cert).read_bytes() if tls.cert else None)
    options = list(CHANNEL_OPTIONS)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(endpoint, credentials, options=options)


def check_endpoints(config: FederationConfig) -> None:
    """Raise ``InvalidArgument`` unless every participant and the aligner have an endpoint."""
    missing = [f"participants[{i}].endpoint" for i, p in enumerate(config.participants)
               if not p.endpoint]
    if config.aligner.endpoint is None:
        missing.append("aligner.endpoint")
    if missing:
        raise InvalidArgument(f"the config does not say where to reach: {', '.join(missing)}")


def connect(config: FederationConfig) -> Connections:
    """Channels to every participant and the aligner named in ``config``."""
    check_endpoints(config)
    channels: list[grpc.Channel] = []

    def channel(endpoint: str) -> grpc.Channel:
        opened = open_channel(endpoint, config.tls)
        channels.append(opened)
        return opened

    participants = {p.name: GrpcParticipant(p.name, channel(p.endpoint or ""))
                    for p in config.participants}
    aligner = GrpcAligner(channel(config.aligner.endpoint or ""))

    def close() -> None:
        for opened in channels:
            opened.close()

    return Connections(participants=participants, aligner=aligner, close=close)
