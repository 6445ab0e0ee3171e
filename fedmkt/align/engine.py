"""The aligner's operations as plain functions over registered tokenizers.

``AlignmentEngine`` is what the gRPC servicer, the HTTP API and the CLI all call: register a
tokenizer, get a vocabulary map (cached on disk by fingerprint pair), align a text, and project a
stream of knowledge from the source tokenization onto the target one. It knows nothing of the
network; inputs that cross a process boundary are validated here or in ``fedmkt.wire``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmkt.align.aligner import TokenAligner
from fedmkt.align.cache import VocabMapCache
from fedmkt.align.canonical import CanonicalMode
from fedmkt.align.registry import TokenizerInfo, TokenizerRegistry, check_fingerprint
from fedmkt.align.vocab_map import VocabMapResult, vocab_map_for
from fedmkt.errors import InvalidArgument
from fedmkt.wire.chunking import KnowledgeSample, SampleAssembler, chunk_knowledge
from fedmkt.wire.validate import SampleStats, decode_chunk

METHODS = ("dtw", "offsets")
MAX_TEXT_CHARS = 200_000
MAX_TOP_K = 1024
MAX_POSITIONS = 32_768
# DTW keeps an n x m matrix of 8-byte cells: 4096 x 4096 tokens is ~134 MB. Counted in tokens
# after tokenizing (a character can be several tokens: byte-level and byte-fallback tokenizers
# spend up to 4 on one), by the aligner itself wherever it runs DTW, offsets' fallback included.
# Longer pairs must use the offsets method (linear).
MAX_DTW_CELLS = 4096 * 4096


@dataclass(frozen=True)
class TokenizerRefArg:
    """A tokenizer named by fingerprint or builtin name (exactly one)."""

    fingerprint: str = ""
    builtin: str = ""


@dataclass(frozen=True)
class KnowledgeConfig:
    source_fingerprint: str
    target_fingerprint: str
    mode: CanonicalMode = CanonicalMode.SURFACE
    method: str = "dtw"
    top_k: int = 0  # 0 = the input's k
    logit_dtype: str = "float16"


@dataclass(frozen=True)
class TargetTokens:
    """The target tokenization of one sample: ids (preferred) or the text to tokenize."""

    token_ids: np.ndarray | None = None
    text: str = ""


def parse_mode(value: str | CanonicalMode | None) -> CanonicalMode:
    if value in (None, "", "unspecified"):
        return CanonicalMode.SURFACE
    try:
        return CanonicalMode(value)
    except ValueError:
        raise InvalidArgument(
            f"canonical mode must be one of {[m.value for m in CanonicalMode]}, got {value!r}"
        ) from None


def parse_method(value: str | None) -> str:
    if value in (None, "", "unspecified"):
        return "dtw"
    if value not in METHODS:
        raise InvalidArgument(f"alignment method must be one of {METHODS}, got {value!r}")
    return value


class AlignmentEngine:
    """Registered tokenizers + vocab-map cache + the aligners built from them."""

    def __init__(self, cache_root: Path, max_aligners: int = 16,
                 max_tokenizers: int | None = None,
                 max_tokenizers_setting: str = "max_tokenizers") -> None:
        self.cache_root = Path(cache_root)
        self.registry = TokenizerRegistry(self.cache_root / "tokenizers",
                                          max_uploaded=max_tokenizers,
                                          cap_setting=max_tokenizers_setting)
        self.maps = VocabMapCache(self.cache_root / "vocab_maps")
        self._aligners: OrderedDict[tuple, TokenAligner] = OrderedDict()
        self._max_aligners = max_aligners
        self._lock = threading.Lock()
        self._build_locks: dict[tuple, threading.Lock] = {}

    # -- tokenizers ---------------------------------------------------------------------
    def register(self, files: dict[str, bytes] | None = None, name: str = "",
                 builtin: str = "") -> TokenizerInfo:
        if builtin and files:
            raise InvalidArgument("give either tokenizer files or a builtin name, not both")
        if builtin:
            return self.registry.register_builtin(builtin)
        return self.registry.register_files(files or {}, name)

    def tokenizer_info(self, ref: TokenizerRefArg) -> TokenizerInfo:
        return self.registry.resolve(ref.fingerprint, ref.builtin).info

    def list_tokenizers(self) -> list[TokenizerInfo]:
        return self.registry.list()

    # -- vocab maps ---------------------------------------------------------------------
    def vocab_map(self, source: TokenizerRefArg, target: TokenizerRefArg,
                  mode: CanonicalMode = CanonicalMode.SURFACE) -> VocabMapResult:
        src = self.registry.resolve(source.fingerprint, source.builtin)
        tgt = self.registry.resolve(target.fingerprint, target.builtin)
        key = (src.info.fingerprint, tgt.info.fingerprint, mode)
        # One build per pair at a time; concurrent callers wait and then read the cache.
        with self._lock:
            build_lock = self._build_locks.setdefault(key, threading.Lock())
        with build_lock:
            return vocab_map_for(src.tokenizer, tgt.tokenizer, mode, cache=self.maps)

    def aligner(self, source: TokenizerRefArg, target: TokenizerRefArg,
                mode: CanonicalMode = CanonicalMode.SURFACE, method: str = "dtw") -> TokenAligner:
        src = self.registry.resolve(source.fingerprint, source.builtin)
        tgt = self.registry.resolve(target.fingerprint, target.builtin)
        key = (src.info.fingerprint, tgt.info.fingerprint, mode, method)
        with self._lock:
            found = self._aligners.get(key)
            if found is not None:
                self._aligners.move_to_end(key)
                return found
        vocab = self.vocab_map(source, target, mode).source_to_target
        built = TokenAligner(src.tokenizer, tgt.tokenizer, mode=mode, method=method,
                             vocab_map=vocab, max_dtw_cells=MAX_DTW_CELLS)
        with self._lock:
            self._aligners[key] = built
            while len(self._aligners) > self._max_aligners:
                self._aligners.popitem(last=False)
        return built

    # -- text ---------------------------------------------------------------------------
    def align_text(self, source: TokenizerRefArg, target: TokenizerRefArg, text: str,
                   mode: CanonicalMode = CanonicalMode.SURFACE, method: str = "dtw"):
        if not isinstance(text, str):
            raise InvalidArgument("text must be a string")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidArgument(f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        aligner = self.aligner(source, target, mode, method)
        try:  # the DTW size is checked after tokenizing, in tokens (TokenAligner.max_dtw_cells)
            return aligner.align_text(text)
        except InvalidArgument as exc:
            raise InvalidArgument(f"text: {exc}") from None

    # -- knowledge ----------------------------------------------------------------------
    def align_knowledge(
        self,
        config: KnowledgeConfig,
        batches: Iterable[tuple[object, dict[str, TargetTokens]]],
    ) -> Iterator[object]:
        """Project a stream of knowledge chunks onto the target tokenization.

        ``batches`` yields ``(KnowledgeChunk, {sample_id: TargetTokens})``; each input chunk is
        validated against the config (source fingerprint, k) and its own header; whole samples
        are projected and re-chunked with the target fingerprint. Yields output chunks in order.
        """
        check_fingerprint(config.source_fingerprint)
        check_fingerprint(config.target_fingerprint)
        if config.top_k < 0 or config.top_k > MAX_TOP_K:
            raise InvalidArgument(f"top_k must be in 0..{MAX_TOP_K}, got {config.top_k}")
        src_ref = TokenizerRefArg(fingerprint=config.source_fingerprint)
        tgt_ref = TokenizerRefArg(fingerprint=config.target_fingerprint)
        aligner = self.aligner(src_ref, tgt_ref, config.mode, config.method)
        source_vocab = self.registry.get(config.source_fingerprint).info.vocab_size
        target_tok = self.registry.get(config.target_fingerprint).tokenizer
        source_tok = self.registry.get(config.source_fingerprint).tokenizer
        target_vocab = len(target_tok)
        assembler = SampleAssembler()
        pending: dict[str, TargetTokens] = {}  # targets of samples not yet whole
        header0 = None  # every later chunk must carry the same run, round, source and k
        for chunk, targets in batches:
            same = {} if header0 is None else {
                "run_id": header0.run_id, "round": header0.round, "source": header0.source,
                "top_k": header0.top_k}
            parts = decode_chunk(chunk, vocab_size=source_vocab,
                                 fingerprint=config.source_fingerprint,
                                 max_positions=MAX_POSITIONS, **same)
            header0 = header0 or chunk.header
            for part in parts:
                _check_logit_range(part, config.logit_dtype)
            firsts = {part.sample_id for part in parts if part.part_index == 0}
            for sample_id in targets:
                if sample_id not in firsts:
                    raise InvalidArgument(
                        f"target tokens for sample {sample_id!r}, which is not a sample whose "
                        "first part is in this batch's chunk; send each sample's target tokens "
                        "with the chunk that holds its part 0"
                    )
            pending.update(targets)
            done = [whole for whole in map(assembler.add, parts) if whole is not None]
            if not done:
                continue
            k_out = config.top_k or header0.top_k
            projected = [
                self._project_one(aligner, sample, pending.pop(sample.sample_id, None),
                                  source_tok, target_tok, target_vocab, k_out)
                for sample in done
            ]
            out_header = {"run_id": header0.run_id, "round": header0.round,
                          "source": header0.source,
                          "tokenizer_fingerprint": config.target_fingerprint, "top_k": k_out}
            yield from chunk_knowledge(projected, out_header, logit_dtype=config.logit_dtype)
        assembler.finish()

    @staticmethod
    def _project_one(aligner: TokenAligner, sample: KnowledgeSample, target: TargetTokens | None,
                     source_tok, target_tok, target_vocab: int, k_out: int) -> KnowledgeSample:
        if sample.token_ids is None:
            raise InvalidArgument(
                f"sample {sample.sample_id}: token_ids are required to align knowledge"
            )
        target_ids = _target_ids(sample, target, source_tok, target_tok, target_vocab)
        try:  # DTW size checked in tokens where DTW runs (offsets' fallback included)
            proj = aligner.project(sample.token_ids, target_ids, sample.topk_ids,
                                   sample.topk_logits, sample.position_start, k_out)
        except InvalidArgument as exc:
            raise InvalidArgument(f"sample {sample.sample_id}: {exc}") from None
        return KnowledgeSample(
            sample_id=sample.sample_id,
            token_ids=np.asarray(target_ids, dtype=np.int32),
            topk_ids=proj.topk_ids,
            topk_logits=proj.topk_logits,
            position_start=proj.position_start,
            loss=sample.loss,
            stats=SampleStats(positions=proj.positions, aligned=proj.aligned,
                              fallback=proj.fallback),
        )


# The largest magnitude each output dtype holds finitely. Projection only copies logits (or
# writes 0), so a logit that fits here stays finite on the way out: the aligner never emits a
# value (inf) that receivers reject. Bigger ones are refused before any work, not clipped, since
# clipping would silently change the distribution the student learns from.
LOGIT_LIMITS = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": None}


def _check_logit_range(part, logit_dtype: str) -> None:
    limit = LOGIT_LIMITS.get(logit_dtype)
    if limit is None:
        return
    real = part.topk_logits[part.topk_ids >= 0]
    if real.size and float(np.abs(real).max()) > limit:
        worst = float(real[np.argmax(np.abs(real))])
        raise InvalidArgument(
            f"sample {part.sample_id}: logit {worst:g} does not fit the {logit_dtype} output "
            f"(largest finite magnitude {limit:g}); ask for float32 output logits "
            "(AlignKnowledgeConfig.logit_dtype) or send smaller logits"
        )


def _target_ids(sample: KnowledgeSample, target: TargetTokens | None, source_tok, target_tok,
                target_vocab: int) -> np.ndarray:
    if target is not None and target.token_ids is not None and len(target.token_ids):
        ids = np.asarray(target.token_ids)
        if ids.ndim != 1 or ids.min() < 0 or ids.max() >= target_vocab:
            raise InvalidArgument(
                f"sample {sample.sample_id}: target token ids must be a 1-D list of ids in "
                f"[0, {target_vocab})"
            )
        return ids.astype(np.int32)
    text = target.text if target is not None and target.text else None
    if text is None:
        text = source_tok.decode(sample.token_ids.tolist(), skip_special_tokens=True)
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"sample {sample.sample_id}: text longer than {MAX_TEXT_CHARS}")
    return np.asarray(target_tok(text, add_special_tokens=False).input_ids, dtype=np.int32)
