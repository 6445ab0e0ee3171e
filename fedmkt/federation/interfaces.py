"""What the round logic needs from a participant and from the aligner, as small Protocols.

The controller service implements them with gRPC stubs (``services/controller/clients.py``);
tests implement them with in-process fakes. Knowledge travels as the wire messages themselves
(``KnowledgeChunk``, ``AlignKnowledgeRequest``) so the pipe source → aligner → destination is
the same code in both cases. Every call takes ``CallOptions``: a deadline and a cancel scope,
and raises ``fedmkt.federation.errors.CallFailed`` (or a subclass) when it fails.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from fedmkt.data.outcomes import SampleOutcomes
from fedmkt.federation.errors import CallCancelled, DeadlineMissed
from fedmkt.wire.v1 import aligner_pb2, knowledge_pb2


class CancelScope:
    """A cancellation flag with callbacks: cancelling it cancels every call registered on it
    (and every child scope). Calls register a callback while in flight."""

    def __init__(self, parent: CancelScope | None = None) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next = 0
        self.reason = ""
        if parent is not None:
            handle = parent.on_cancel(lambda: self.cancel(parent.reason))
            self._detach = lambda: parent.remove(handle)
        else:
            self._detach = lambda: None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> int:
        """Run ``callback`` on cancel (at once if already cancelled); returns a handle."""
        with self._lock:
            if not self._event.is_set():
                self._next += 1
                self._callbacks[self._next] = callback
                return self._next
        callback()
        return 0

    def remove(self, handle: int) -> None:
        with self._lock:
            self._callbacks.pop(handle, None)

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)

    def close(self) -> None:
        """Detach from the parent (a finished child scope must not accumulate there)."""
        self._detach()


@dataclass(frozen=True)
class CallOptions:
    """Deadline (``time.monotonic()`` seconds, None = none) and cancel scope of one call."""

    who: str
    deadline: float | None
    scope: CancelScope

    @classmethod
    def within(cls, who: str, seconds: float | None, scope: CancelScope) -> CallOptions:
        deadline = None if seconds is None else time.monotonic() + seconds
        return cls(who, deadline, scope)

    def remaining(self) -> float | None:
        """Seconds left (None = no deadline); raises if cancelled or past the deadline."""
        self.check()
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        if self.scope.cancelled:
            raise CallCancelled(self.who, self.scope.reason or "cancelled")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineMissed(self.who)

    def for_who(self, who: str) -> CallOptions:
        return CallOptions(who, self.deadline, self.scope)


@dataclass(frozen=True)
class ProgressUpdate:
    """One message of a long call (``Progress`` on the wire); the last has ``done=True``."""

    step: str
    completed: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)
    done: bool = False
    message: str = ""
    outcomes: SampleOutcomes | None = None  # Evaluate's final message: per-sample results


@dataclass(frozen=True)
class ParticipantDescription:
    """What ``Describe`` tells (counts only, never data)."""

    name: str
    role: str  # "server" | "client"
    model: str
    tokenizer_fingerprint: str
    tokenizer_name: str
    vocab_size: int
    public_samples: int
    private_samples: int
    latest_adapter_round: int
    trainable_parameters: int = 0
    total_parameters: int = 0
    device: str = ""


@dataclass(frozen=True)
class ReceiveResult:
    samples: int
    digest: str


@dataclass(frozen=True)
class AdapterBlob:
    round: int
    digest: str
    data: bytes
    peft_config: str = ""  # adapter_config.json as the participant saved it (checked)
    base_model: str = ""  # the base model as fedmkt names it


@dataclass(frozen=True)
class PushResult:
    tensors: int
    digest: str


class KnowledgeStream(Protocol):
    """The chunks of ``ComputeKnowledge``; after exhaustion ``compute_seconds()`` gives the
    model compute time the participant reported (None when it reported none), and
    ``work_metrics()`` its model work (``work/…`` and ``floor/…`` counts; empty when none)."""

    def __iter__(self) -> Iterator[knowledge_pb2.KnowledgeChunk]: ...

    def compute_seconds(self) -> float | None: ...

    def work_metrics(self) -> dict[str, float]: ...


class ParticipantClient(Protocol):
    name: str

    def describe(self, opts: CallOptions) -> ParticipantDescription: ...

    def train_local(self, run_id: str, round: int, epochs: int,
                    opts: CallOptions) -> Iterator[ProgressUpdate]: ...

    def compute_knowledge(self, run_id: str, round: int, top_k: int, logit_dtype: str,
                          opts: CallOptions) -> KnowledgeStream: ...

    def public_tokens(self, opts: CallOptions) -> Iterator[aligner_pb2.TargetTokens]: ...

    def receive_knowledge(self, chunks: Iterator[knowledge_pb2.KnowledgeChunk],
                          opts: CallOptions) -> ReceiveResult: ...

    def distill(self, run_id: str, round: int, strategy: str, kd_alpha: float,
                temperature: float, epochs: int, opts: CallOptions) -> Iterator[ProgressUpdate]: ...

    def evaluate(self, run_id: str, round: int, split: str,
                 opts: CallOptions) -> Iterator[ProgressUpdate]: ...

    def fetch_adapter(self, round: int, opts: CallOptions, run_id: str = "") -> AdapterBlob: ...

    def push_adapter(self, round: int, data: bytes, opts: CallOptions) -> PushResult: ...


class AlignerClient(Protocol):
    def ensure_tokenizer(self, fingerprint: str, tokenizer: str, opts: CallOptions) -> str:
        """Make sure the aligner knows the tokenizer with ``fingerprint``; register it from
        ``tokenizer`` (a builtin name or a tokenizer folder) when it does not. Returns the
        fingerprint the aligner computed (the caller checks it matches)."""
        ...

    def prepare(self, source_fingerprint: str, target_fingerprint: str, canonical: str,
                opts: CallOptions) -> float:
        """Build (or load from cache) the vocabulary map source → target ahead of the first
        knowledge stream; returns the aligner's build seconds (0 when cached)."""
        ...

    def align_knowledge(self, requests: Iterator[aligner_pb2.AlignKnowledgeRequest],
                        opts: CallOptions) -> Iterator[knowledge_pb2.KnowledgeChunk]: ...


@dataclass
class Connections:
    """The services one run talks to: participants by name, and the aligner."""

    participants: dict[str, ParticipantClient]
    aligner: AlignerClient
    close: Callable[[], None] = lambda: None


class ListStream:
    """A ``KnowledgeStream`` over already computed chunks (tests, fakes)."""

    def __init__(self, chunks: Iterable[knowledge_pb2.KnowledgeChunk],
                 compute: float | None = None) -> None:
        self._chunks = chunks
        self._compute = compute

    def __iter__(self) -> Iterator[knowledge_pb2.KnowledgeChunk]:
        return iter(self._chunks)

    def compute_seconds(self) -> float | None:
        return self._compute


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Only the finite float values (the wire map may carry NaN for 'not computed')."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
