"""One FedMKT participant: the server LLM or a client SLM, without any network code.

``Participant`` loads the model (frozen) with a LoRA adapter, its tokenizer and its data, and
offers one method per RPC of ``fedmkt.v1.ParticipantService``. The role decides what differs:
only a client holds private data and trains on it (``train_local``); the server distils from one
teacher per client, a client from the server alone. No method returns private samples or
anything computed on them except the adapter (``describe`` gives only counts; ``evaluate``
refuses the private split; knowledge is computed on the public data only).

Long methods take ``progress(step, completed, total, metrics)`` and a ``cancel`` event checked
between batches: a cancelled call raises `Cancelled` and puts back the adapter it started from.
Only one long call runs at a time. Run state lives under the state folder (see
``fedmkt.participant.runs``); on start the latest adapter of the current run is reloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedmkt.align.registry import TokenizerInfo, describe
from fedmkt.data.metrics import choice_hits, generation_rouge_l_values, score_choices
from fedmkt.data.outcomes import OutcomesError, SampleOutcomes, outcomes_of
from fedmkt.data.tokenize import pad_id_for
from fedmkt.errors import FailedPrecondition, InvalidArgument, NotFound
from fedmkt.knowledge.selection import Selection, select_teachers
from fedmkt.knowledge.topk import iter_knowledge
from fedmkt.models import adapters
from fedmkt.models.heads import SelectiveHead
from fedmkt.models.loading import load_model
from fedmkt.models.lora import LoraSettings, apply_lora, count_parameters
from fedmkt.models.registry import BUILTIN_MODELS
from fedmkt.models.work import WorkLedger
from fedmkt.participant.config import ParticipantConfig
from fedmkt.participant.data import EncodedSplit, encode_split, load_local_data
from fedmkt.participant.distill import (
    CrossEntropyStep,
    DistillSettings,
    DistillStep,
    collect_losses,
    selection_metrics,
    teacher_losses,
)
from fedmkt.participant.memo import StepMemo, digest_split, digest_tensors
from fedmkt.participant.runs import (
    INITIAL,
    RunFolders,
    StateKey,
    check_round,
    check_run_id,
    read_current_run,
    write_current_run,
)
from fedmkt.participant.staging import SELF_SOURCE, Expectations, StagedInfo, StagedKnowledge
from fedmkt.participant.training import (
    ProgressFn,
    TrainOptions,
    TrainResult,
    derive_seed,
    run_training,
    seed_everything,
)
from fedmkt.wire import codec
from fedmkt.wire.chunking import KnowledgeSample
from fedmkt.wire.v1 import knowledge_pb2

log = logging.getLogger(__name__)

PHASE_TRAIN, PHASE_DISTILL = 1, 2
SPLITS = ("eval", "public")


@dataclass(frozen=True)
class Description:
    """What ``describe`` tells: identity and counts, never data."""

    name: str
    role: str
    model: str
    tokenizer: TokenizerInfo
    trainable_parameters: int
    total_parameters: int
    device: str
    dtype: str
    public_samples: int
    private_samples: int
    latest_adapter_round: int  # -1 when none


@dataclass(frozen=True)
class KnowledgeOutput:
    """The header every chunk of a knowledge stream carries, and the samples (lazy)."""

    header: knowledge_pb2.KnowledgeHeader
    samples: Iterator[KnowledgeSample]
    logit_dtype: str


@dataclass(frozen=True)
class AdapterBlob:
    round: int
    data: bytes
    digest: str  # sha256 hex of data
    peft_config: str = ""  # the round folder's adapter_config.json
    base_model: str = ""  # the base model as fedmkt names it (fedmkt_adapter.json)


def _tokenizer_label(model_spec: str) -> str:
    """The builtin tokenizer name of a builtin model (so an aligner can register it by name),
    else the model spec."""
    builtin = BUILTIN_MODELS.get(model_spec)
    return builtin.tokenizer if builtin is not None else model_spec


def _noop_progress(step: str, completed: int, total: int, metrics: dict[str, float]) -> None:
    return None


class Participant:
    """See the module docstring. Construct once per process; methods are thread-safe."""

    def __init__(self, config: ParticipantConfig, *, busy_timeout: float = 60.0) -> None:
        self.config = config
        self.state_dir = config.resolved_state_dir()
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._busy_with = ""
        seed_everything(config.seed)  # LoRA initialisation is reproducible
        base, self.tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
        lora = config.lora
        self.model = apply_lora(base, LoraSettings(r=lora.r, alpha=lora.alpha,
                                                   dropout=lora.dropout,
                                                   target_modules=lora.target_modules))
        self.model.eval()
        self.device = next(self.model.parameters()).device
        # The LM head only where logits are read (checked against the model's own forward).
        self.head = SelectiveHead.for_model(self.model)
        self.last_knowledge_work = WorkLedger()  # of the latest compute_knowledge stream
        # (run, adapter, answer NLL per public sample) of the latest whole knowledge stream
        self._public_losses: tuple[str, StateKey, dict[str, float]] | None = None
        self.memo = StepMemo(config.resolved_memo_dir())
        self.pad_id = pad_id_for(self.tokenizer)
        self.tokenizer_info = describe(self.tokenizer, _tokenizer_label(config.model))
        self.vocab_size = len(self.tokenizer)
        self._check_vocab()
        self._load_data()
        self._initial_state = adapters.adapter_state_dict(self.model)
        self.run_id: str | None = read_current_run(self.state_dir)
        self._key: StateKey | None = None
        self._resume()

    # ------------------------------------------------------------------ set-up

    def _check_vocab(self) -> None:
        rows = self.model.get_output_embeddings().weight.shape[0]
        if rows < self.vocab_size:
            raise InvalidArgument(f"model {self.config.model!r} predicts {rows} ids but its "
                                  f"tokenizer has {self.vocab_size}")

    def _load_data(self) -> None:
        local = load_local_data(self.config)
        length = self.config.max_length
        self.public = encode_split("public", local.public, self.tokenizer, length, strict=True)
        self.eval_split = encode_split("eval", local.eval, self.tokenizer, length, strict=False)
        self.private = encode_split("private", local.private, self.tokenizer, length,
                                    strict=False)
        self.public_token_ids = {
            enc.sample_id: np.asarray(enc.input_ids, dtype=np.int32) for enc in self.public
        }

    def _resume(self) -> None:
        """Reload the latest complete adapter of the current run, if any."""
        if self.run_id is None:
            return
        latest = RunFolders(self.state_dir, self.run_id).latest_final()
        if latest is not None:
            self._restore(StateKey("final", latest))
            log.info("%s: resumed run %s at the adapter of round %d", self.config.name,
                     self.run_id, latest)

    # ------------------------------------------------------------------ state helpers

    @contextlib.contextmanager
    def _busy(self, what: str) -> Iterator[None]:
        if not self._lock.acquire(timeout=self.busy_timeout):
            raise FailedPrecondition(
                f"participant {self.config.name} is busy with {self._busy_with}; retry later"
            )
        self._busy_with = what
        try:
            yield
        finally:
            self._busy_with = ""
            self._lock.release()

    def _folders(self, run_id: str) -> RunFolders:
        """The run's folders; switching to another run forgets the in-memory adapter state."""
        folders = RunFolders(self.state_dir, run_id)
        if run_id != self.run_id:
            write_current_run(self.state_dir, run_id)
            self.run_id = run_id
            self._key = None
        return folders

    def _restore(self, key: StateKey) -> None:
        """Load the adapter named by ``key`` unless it is what the model holds already."""
        if key == self._key:
            return
        if key == INITIAL:
            adapters.load_state_into(self.model, self._initial_state)
        else:
            assert self.run_id is not None
            adapters.load_adapter_into(self.model, RunFolders(self.state_dir,
                                                              self.run_id).path(key))
        self._key = key

    def _ensure_current(self, folders: RunFolders) -> None:
        """Make sure the model holds some adapter of this run: the one in memory, else the
        latest saved one, else the initial one."""
        if self._key is not None:
            return
        latest = folders.latest_final()
        self._restore(INITIAL if latest is None else StateKey("final", latest))

    def _save(self, folders: RunFolders, round_index: int, *, after_train: bool) -> None:
        if after_train:
            adapters.save_adapter(self.model, folders.after_train, round_index)
        adapters.save_adapter(self.model, folders.root, round_index)
        self._key = StateKey("train" if after_train else "final", round_index)

    def _options(self, epochs: int, round_index: int, phase: int) -> TrainOptions:
        c = self.config
        return TrainOptions(
            learning_rate=c.learning_rate, epochs=epochs, batch_size=c.batch_size,
            grad_accum=c.grad_accum, weight_decay=c.weight_decay, betas=c.betas,
            warmup_ratio=c.warmup_ratio, grad_clip=c.grad_clip,
            seed=derive_seed(c.seed, round_index, phase),
        )

    # ------------------------------------------------------------------ RPC-shaped methods

    def describe(self) -> Description:
        counts = count_parameters(self.model)
        latest = None
        if self.run_id is not None:
            latest = RunFolders(self.state_dir, self.run_id).latest_final()
        dtype = next(self.model.parameters()).dtype
        return Description(
            name=self.config.name, role=self.config.role, model=self.config.model,
            tokenizer=self.tokenizer_info, trainable_parameters=counts.trainable,
            total_parameters=counts.total, device=str(self.device),
            dtype=str(dtype).removeprefix("torch."), public_samples=len(self.public),
            private_samples=len(self.private),
            latest_adapter_round=-1 if latest is None else latest,
        )

    def train_local(self, run_id: str, round_index: int, epochs: int = 0, *,
                    progress: ProgressFn | None = None,
                    cancel: threading.Event | None = None) -> dict[str, float]:
        """LoRA fine-tuning on the private data (clients only); saves the round's adapter."""
        check_round(round_index)
        if self.config.is_server:
            raise FailedPrecondition("the server holds no private data; TrainLocal is for "
                                     "clients")
        if not len(self.private):
            raise FailedPrecondition(f"client {self.config.name} has no private samples")
        epochs = epochs or self.config.local_epochs
        with self._busy("train_local"):
            folders = self._folders(run_id)
            start = folders.train_start(round_index)
            self._restore(start)
            options = self._options(epochs, round_index, PHASE_TRAIN)
            key = self._memo_key("train_local", self.private, options=asdict(options))
            reused = self._reuse(key, trains=True)
            if reused is not None:
                self._save(folders, round_index, after_train=True)
                return reused
            step = CrossEntropyStep(self.head, self.private, self.pad_id, self.device)
            result = self._train(start, self.private, step, options, "train_local", progress,
                                 cancel)
            self._save(folders, round_index, after_train=True)
        metrics = {**result.metrics, "samples": float(len(self.private)),
                   "epochs": float(epochs), "steps": float(result.optimizer_steps)}
        self.memo.put(key, metrics, adapters.state_dict_to_bytes(
            adapters.adapter_state_dict(self.model)))
        return {**metrics, **result.work.metrics()}

    # ------------------------------------------------------------------ memo

    def _memo_key(self, step: str, split: EncodedSplit, **settings: Any) -> str:
        """The key of a step's result: model, adapter now loaded, data, settings (see
        ``fedmkt.participant.memo``)."""
        c = self.config
        return StepMemo.key(
            step=step, model=c.model, tokenizer=self.tokenizer_info.fingerprint,
            dtype=str(next(self.model.parameters()).dtype), device=self.device.type,
            lora=c.lora.model_dump(mode="json"), kd_positions=c.kd_positions,
            adapter=digest_tensors(adapters.adapter_state_dict(self.model)),
            data=digest_split(split.encoded), **settings)

    def _reuse(self, key: str, *, trains: bool) -> dict[str, float] | None:
        """The metrics of a stored result (its adapter loaded when the step trains), marked
        ``reused``; None when there is none. A reused step does no model work."""
        entry = self.memo.get(key)
        if entry is None or (trains and entry.adapter is None):
            return None
        if trains:
            state = adapters.state_dict_from_bytes(entry.adapter)
            adapters.validate_adapter_state(self.model, state)
            adapters.load_state_into(self.model, state)
            self._key = None
        log.info("%s: reusing the result of an identical earlier step (memo %s)",
                 self.config.name, key[:12])
        return {**entry.metrics, "reused": 1.0}

    def _train(self, start: StateKey, split: EncodedSplit, step: Any, options: TrainOptions,
               name: str, progress: ProgressFn | None,
               cancel: threading.Event | None) -> TrainResult:
        """Run the loop; on any failure (cancel included) put back the ``start`` adapter."""
        try:
            self._key = None  # the weights change from here on
            return run_training(self.model, len(split), step, options, name=name,
                                progress=progress, cancel=cancel,
                                lengths=[len(enc) for enc in split.encoded])
        except BaseException:
            self._restore(start)
            raise

    def compute_knowledge(self, run_id: str, round_index: int, top_k: int = 0,
                          logit_dtype: str = "") -> KnowledgeOutput:
        """Top-k knowledge and answer NLL of every public sample, with the current adapter.

        The samples are produced lazily; the participant is busy until they are consumed (or
        the iterator is closed)."""
        check_round(round_index)
        k = top_k or self.config.top_k
        if not 1 <= k <= min(1024, self.vocab_size):
            raise InvalidArgument(f"top_k must be in [1, {min(1024, self.vocab_size)}], got {k}")
        dtype = logit_dtype or self.config.logit_dtype
        codec.resolve_dtype(dtype)
        header = knowledge_pb2.KnowledgeHeader(
            run_id=run_id, round=round_index, source=self.config.name,
            tokenizer_fingerprint=self.tokenizer_info.fingerprint, top_k=k)
        check_run_id(run_id)  # before anything streams
        return KnowledgeOutput(header, self._knowledge(run_id, k), dtype)

    def _knowledge(self, run_id: str, k: int) -> Iterator[KnowledgeSample]:
        with self._busy("compute_knowledge"):
            self._ensure_current(self._folders(run_id))
            self.last_knowledge_work = work = WorkLedger()
            losses: dict[str, float] = {}
            yield from collect_losses(self._public_pass(k, work), losses)
            # The student pass of a later distill with this same adapter reads these losses
            # instead of running the public data again (only once the stream is whole).
            self._public_losses = (run_id, self._key, losses) if self._key else None

    def _public_pass(self, k: int, work: WorkLedger) -> Iterator[KnowledgeSample]:
        """Top-k and answer NLL of every public sample with the current adapter, at the rows the
        receivers read (``kd_positions``)."""
        yield from iter_knowledge(self.model, self.public.encoded, k=k,
                                  batch_size=self.config.eval_batch_size, device=self.device,
                                  progress=sys.stderr.isatty(),
                                  positions=self.config.kd_positions, head=self.head, work=work)

    def public_tokens(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(sample_id, token_ids)`` of every public sample in this participant's tokenization."""
        yield from self.public_token_ids.items()

    def receive_knowledge(self, run_id: str, round_index: int,
                          chunks: Iterable[knowledge_pb2.KnowledgeChunk]) -> StagedInfo:
        """Validate one teacher's aligned knowledge and stage it for ``distill`` (see
        ``fedmkt.participant.staging``). Raises ``WireError`` and stages nothing when any chunk
        is unacceptable."""
        check_round(round_index)
        folders = RunFolders(self.state_dir, run_id)
        expect = Expectations(run_id=run_id, round=round_index,
                              fingerprint=self.tokenizer_info.fingerprint,
                              vocab_size=self.vocab_size, token_ids=self.public_token_ids)
        info = folders.knowledge.receive(chunks, expect)
        log.info("%s: staged %d samples of knowledge from %s for run %s round %d (sha256 %s)",
                 self.config.name, info.samples, info.source, run_id, round_index,
                 info.digest[:12])
        return info

    def staged_sources(self, run_id: str, round_index: int) -> list[str]:
        return RunFolders(self.state_dir, run_id).knowledge.sources(round_index)

    def distill(self, run_id: str, round_index: int, *, strategy: str = "",
                kd_alpha: float | None = None, temperature: float | None = None, epochs: int = 0,
                progress: ProgressFn | None = None,
                cancel: threading.Event | None = None) -> dict[str, float]:
        """Selective KD from every teacher staged for the round; saves the round's adapter.

        ``strategy="none"`` trains on the public data with CE only and reads no knowledge (the
        baseline run's public-only fine-tuning); any other strategy needs knowledge staged.
        """
        check_round(round_index)
        c = self.config
        strategy = strategy or c.strategy
        kd_alpha = c.kd_alpha if kd_alpha is None else kd_alpha  # λ = 0 is a valid choice
        temperature = c.temperature if temperature is None else temperature
        epochs = epochs or c.distill_epochs
        if strategy not in ("dualmince", "fate", "weighted", "none"):
            raise InvalidArgument(f"strategy must be dualmince, fate, weighted or none, got "
                                  f"{strategy!r}")
        if not 0.0 <= kd_alpha <= 1.0 or not temperature > 0:
            raise InvalidArgument("kd_alpha must be in [0, 1] and temperature > 0")
        progress = progress or _noop_progress
        with self._busy("distill"):
            folders = self._folders(run_id)
            names = [] if strategy == "none" else folders.knowledge.sources(round_index)
            if not names and strategy != "none":
                raise FailedPrecondition(
                    f"no knowledge staged for run {run_id} round {round_index}; send it with "
                    "ReceiveKnowledge first")
            start = folders.distill_start(round_index)
            self._restore(start)
            if strategy == "none":  # no knowledge read: a function of adapter, data, settings
                key = self._memo_key("distill_none", self.public,
                                     options=asdict(self._options(epochs, round_index,
                                                                  PHASE_DISTILL)))
                reused = self._reuse(key, trains=True)
                if reused is not None:
                    self._save(folders, round_index, after_train=False)
                    return reused
            with contextlib.ExitStack() as opened:
                teachers = [opened.enter_context(self._open(folders, round_index, name))
                            for name in names]
                result, selection, losses = self._distill(
                    folders, run_id, round_index, teachers, start, strategy,
                    DistillSettings(kd_alpha, temperature, c.kd_kind, c.kd_positions), epochs,
                    progress, cancel, opened)
            self._save(folders, round_index, after_train=False)
            folders.knowledge.prune(keep_from_round=round_index)
        metrics = {**result.metrics, **result.work.metrics(),
                   **selection_metrics(selection, names)}
        metrics.update(epochs=float(epochs), steps=float(result.optimizer_steps))
        if strategy != "none":
            metrics["student_nll"] = float(losses.mean())
        else:
            self.memo.put(key, {k: v for k, v in metrics.items() if not k.startswith(
                ("work/", "floor/"))}, adapters.state_dict_to_bytes(
                    adapters.adapter_state_dict(self.model)))
        return metrics

    def _distill(self, folders: RunFolders, run_id: str, round_index: int,
                 teachers: list[StagedKnowledge], start: StateKey, strategy: str,
                 settings: DistillSettings, epochs: int, progress: ProgressFn,
                 cancel: threading.Event | None, opened: contextlib.ExitStack
                 ) -> tuple[TrainResult, Selection, np.ndarray]:
        """Student pass, selection, then training; returns (result, selection, losses)."""
        ids = self.public.ids()
        student_work = WorkLedger()
        if strategy == "none":  # no teacher: CE only, the student's losses are not needed
            losses = np.zeros(len(ids))  # unused: no teacher is ever selected
        else:
            progress("student_loss", 0, len(ids), {})
            student = self._student_pass(folders, run_id, round_index, strategy, cancel,
                                         student_work)
            progress("student_loss", len(ids), len(ids), {})
            losses = np.array([student[i] for i in ids], dtype=np.float64)
        selection = select_teachers(losses, teacher_losses(teachers, ids),
                                    "dualmince" if strategy == "none" else strategy,
                                    self.config.selection_temperature)
        weights, sources = selection.weights, list(teachers)
        if strategy == "fate":
            weights = selection.weights_with_self()
            sources.append(opened.enter_context(self._open(folders, round_index, SELF_SOURCE)))
        step = DistillStep(self.head, self.public, sources, weights, settings, self.pad_id,
                           self.device)
        result = self._train(start, self.public, step,
                             self._options(epochs, round_index, PHASE_DISTILL), "distill",
                             progress, cancel)
        result.work += student_work
        return result, selection, losses

    def _open(self, folders: RunFolders, round_index: int, source: str) -> StagedKnowledge:
        return folders.knowledge.open(round_index, source, vocab_size=self.vocab_size,
                                      fingerprint=self.tokenizer_info.fingerprint,
                                      known_ids=self.public_token_ids)

    def _student_pass(self, folders: RunFolders, run_id: str, round_index: int, strategy: str,
                      cancel: threading.Event | None, work: WorkLedger) -> dict[str, float]:
        """The student's answer NLL per public sample; for ``fate`` also stages its top-k.

        When this adapter's knowledge stream of this run already produced the losses, they are
        reused (the same model state on the same data: DESIGN §11, nothing recomputed)."""
        cached = self._public_losses
        if (strategy != "fate" and cached is not None and cached[0] == run_id
                and cached[1] == self._key and len(cached[2]) == len(self.public)):
            return dict(cached[2])
        losses: dict[str, float] = {}
        k = self.config.top_k if strategy == "fate" else 1
        samples = collect_losses(self._public_pass(k, work), losses, cancel)
        if strategy == "fate":
            header = knowledge_pb2.KnowledgeHeader(
                run_id=run_id, round=round_index, source=self.config.name,
                tokenizer_fingerprint=self.tokenizer_info.fingerprint, top_k=k)
            folders.knowledge.write_local(round_index, SELF_SOURCE, samples, header,
                                          codec.resolve_dtype(self.config.logit_dtype))
        else:
            for _ in samples:
                pass
        return losses

    def evaluate(self, run_id: str = "", split: str = "eval", *,
                 progress: ProgressFn | None = None,
                 cancel: threading.Event | None = None) -> dict[str, float]:
        """Multiple-choice accuracy (``acc``, ``acc_norm``) or ROUGE-L (generation tasks) and
        the mean answer NLL (``nll``) on the held-out ``eval`` split (or ``public``)."""
        return self.evaluate_samples(run_id, split, progress=progress, cancel=cancel)[0]

    def evaluate_samples(self, run_id: str = "", split: str = "eval", *,
                         progress: ProgressFn | None = None,
                         cancel: threading.Event | None = None
                         ) -> tuple[dict[str, float], SampleOutcomes]:
        """:meth:`evaluate`'s metrics and the value of each metric on each sample (the input
        of paired comparisons between runs)."""
        split = split or "eval"
        if split not in SPLITS:
            raise InvalidArgument(f"split must be one of {', '.join(SPLITS)} (private data is "
                                  f"never evaluated for others), got {split!r}")
        data = self.eval_split if split == "eval" else self.public
        if not len(data):
            raise FailedPrecondition(f"participant {self.config.name} has no {split} samples")
        progress = progress or _noop_progress
        with self._busy("evaluate"):
            if run_id:
                self._ensure_current(self._folders(run_id))
            key = self._memo_key("evaluate", data, split_name=split,
                                 eval_batch_size=self.config.eval_batch_size,
                                 max_length=self.config.max_length)
            entry = self.memo.get(key)
            if entry is not None and entry.outcomes is not None:
                with contextlib.suppress(OutcomesError):
                    outcomes = SampleOutcomes.from_json(entry.outcomes)
                    log.info("%s: reusing the result of an identical earlier evaluation "
                             "(memo %s)", self.config.name, key[:12])
                    return {**entry.metrics, "reused": 1.0}, outcomes
            progress("evaluate", 0, 2, {})
            work = WorkLedger()
            metrics, columns = self._score(data, work)
            progress("evaluate", 1, 2, metrics)
            if "nll" not in columns:  # not read off the choices' scores: a pass over answers
                losses: dict[str, float] = {}
                for _ in collect_losses(iter_knowledge(self.model, data.encoded, k=1,
                                                       batch_size=self.config.eval_batch_size,
                                                       device=self.device, progress=False,
                                                       positions="answer", head=self.head,
                                                       work=work),
                                        losses, cancel):
                    pass
                columns["nll"] = np.asarray([losses[s.id] for s in data.samples])
        outcomes = outcomes_of([s.id for s in data.samples], **columns)
        metrics["nll"] = float(np.mean(columns["nll"]))
        metrics["n"] = float(len(data))
        self.memo.put(key, metrics, outcomes=outcomes.to_json())
        metrics.update(work.metrics())
        return metrics, outcomes

    def _score(self, data: EncodedSplit, work: WorkLedger) -> tuple[dict[str, float],
                                                                    dict[str, np.ndarray]]:
        """Accuracy (multiple choice) or ROUGE-L, as means and per sample; per sample also the
        answer NLL when it can be read off the choices' scores: the right choice's score is the
        answer's log-likelihood when the answer is that choice and it does not start the text
        (the scoring then adds a context token the answer's own encoding lacks)."""
        samples = data.samples
        kwargs = {"batch_size": self.config.eval_batch_size, "device": self.device,
                  "max_length": self.config.max_length}
        if not all(s.is_multiple_choice for s in samples):
            values = generation_rouge_l_values(self.model, self.tokenizer, samples, **kwargs)
            return {"rouge_l": float(values.mean())}, {"rouge_l": values}
        scores = score_choices(self.model, self.tokenizer, samples, work=work, **kwargs)
        hits, hits_norm = choice_hits(samples, scores)
        metrics = {"acc": float(hits.mean()), "acc_norm": float(hits_norm.mean())}
        columns = {"acc": hits, "acc_norm": hits_norm}
        same = all(s.answer == s.choices[s.label] and enc.answer_start > 0
                   for s, enc in zip(samples, data.encoded, strict=True))
        if same:
            columns["nll"] = np.asarray([-row[s.label] for s, row in zip(samples, scores,
                                                                         strict=True)])
        return metrics, columns

    # ------------------------------------------------------------------ adapters

    def fetch_adapter(self, round_index: int = -1, run_id: str = "") -> AdapterBlob:
        """The saved adapter of a round (-1 = the latest) of ``run_id`` (empty = the current
        run) as safetensors bytes."""
        run_id = run_id or self.run_id or ""
        if not run_id:
            raise NotFound(f"participant {self.config.name} has no run yet, hence no adapter")
        folders = RunFolders(self.state_dir, run_id)
        if round_index == -1:
            latest = folders.latest_final()
            if latest is None:
                raise NotFound(f"run {run_id} has no saved adapter yet")
            round_index = latest
        check_round(round_index)
        if round_index not in folders.final_rounds():
            raise NotFound(f"run {run_id} has no adapter for round {round_index}")
        folder = folders.path(StateKey("final", round_index))
        data = adapters.adapter_bytes(folder)
        peft_config, base_model = adapters.peft_folder_texts(folder)
        return AdapterBlob(round_index, data, hashlib.sha256(data).hexdigest(), peft_config,
                           base_model)

    def push_adapter(self, round_index: int, data: bytes) -> tuple[int, str]:
        """Replace the LoRA weights (e.g. a FedAvg result) and save them as the round's adapter.

        Returns (tensors taken, sha256 hex of the adapter as saved, i.e. what ``fetch_adapter``
        returns from now on). Nothing changes when the adapter does not fit."""
        check_round(round_index)
        if self.run_id is None:
            raise FailedPrecondition(f"participant {self.config.name} has no run yet")
        state = adapters.state_dict_from_bytes(data)
        adapters.validate_adapter_state(self.model, state)
        with self._busy("push_adapter"):
            folders = self._folders(self.run_id)
            adapters.load_state_into(self.model, state)
            self._save(folders, round_index, after_train=False)
        return len(state), self.fetch_adapter(round_index).digest
