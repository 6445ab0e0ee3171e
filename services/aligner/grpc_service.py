"""gRPC ``fedmkt.v1.AlignerService``: translates between the wire and ``AlignmentEngine``."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fedmkt.align.aligner import printable_token
from fedmkt.align.engine import (
    AlignmentEngine,
    KnowledgeConfig,
    TargetTokens,
    TokenizerRefArg,
    parse_method,
    parse_mode,
)
from fedmkt.align.registry import TokenizerInfo
from fedmkt.errors import InvalidArgument
from fedmkt.wire import codec
from fedmkt.wire.v1 import aligner_pb2, aligner_pb2_grpc, tensor_pb2, tokenizer_pb2
from services.common import map_errors

MODE_NAMES = {
    tokenizer_pb2.CANONICAL_MODE_UNSPECIFIED: "surface",
    tokenizer_pb2.CANONICAL_MODE_SURFACE: "surface",
    tokenizer_pb2.CANONICAL_MODE_FATE: "fate",
}
MODE_ENUMS = {"surface": tokenizer_pb2.CANONICAL_MODE_SURFACE,
              "fate": tokenizer_pb2.CANONICAL_MODE_FATE}
METHOD_NAMES = {
    aligner_pb2.SEQUENCE_ALIGNMENT_UNSPECIFIED: "dtw",
    aligner_pb2.SEQUENCE_ALIGNMENT_DTW: "dtw",
    aligner_pb2.SEQUENCE_ALIGNMENT_OFFSETS: "offsets",
}
DTYPE_NAMES = {
    tensor_pb2.DTYPE_UNSPECIFIED: "float16",
    tensor_pb2.DTYPE_FLOAT16: "float16",
    tensor_pb2.DTYPE_BFLOAT16: "bfloat16",
    tensor_pb2.DTYPE_FLOAT32: "float32",
}


def _enum(table: dict, value: int, what: str):
    if value not in table:
        raise InvalidArgument(f"unknown {what} value {value}")
    return table[value]


def ref_from_pb(ref: tokenizer_pb2.TokenizerRef, what: str) -> TokenizerRefArg:
    kind = ref.WhichOneof("ref")
    if kind is None:
        raise InvalidArgument(f"{what}: name the tokenizer by fingerprint or builtin")
    return TokenizerRefArg(fingerprint=ref.fingerprint, builtin=ref.builtin)


def info_to_pb(info: TokenizerInfo) -> tokenizer_pb2.TokenizerInfo:
    return tokenizer_pb2.TokenizerInfo(
        fingerprint=info.fingerprint, vocab_size=info.vocab_size, name=info.name,
        special_token_ids=list(info.special_token_ids),
        word_boundary_marker=info.word_boundary_marker,
    )


class AlignerServicer(aligner_pb2_grpc.AlignerServiceServicer):
    def __init__(self, engine: AlignmentEngine) -> None:
        self.engine = engine

    @map_errors
    def RegisterTokenizer(self, request, context):
        files = {}
        for f in request.files:
            if f.name in files:
                raise InvalidArgument(f"file {f.name!r} given twice")
            files[f.name] = f.content
        info = self.engine.register(files=files, name=request.name, builtin=request.builtin)
        return info_to_pb(info)

    @map_errors
    def GetTokenizer(self, request, context):
        return info_to_pb(self.engine.tokenizer_info(ref_from_pb(request.tokenizer, "tokenizer")))

    @map_errors
    def ListTokenizers(self, request, context):
        return aligner_pb2.ListTokenizersResponse(
            tokenizers=[info_to_pb(i) for i in self.engine.list_tokenizers()]
        )

    @map_errors
    def GetVocabMap(self, request, context):
        mode = parse_mode(_enum(MODE_NAMES, request.canonical, "canonical mode"))
        result = self.engine.vocab_map(ref_from_pb(request.source, "source"),
                                       ref_from_pb(request.target, "target"), mode)
        return aligner_pb2.VocabMap(
            source_fingerprint=result.source_fingerprint,
            target_fingerprint=result.target_fingerprint,
            canonical=MODE_ENUMS[mode.value],
            source_to_target=codec.encode(result.source_to_target.astype(np.int32)),
            from_cache=result.from_cache,
            build_seconds=result.build_seconds,
            exact_matches=result.exact_matches,
        )

    @map_errors
    def AlignText(self, request, context):
        mode = parse_mode(_enum(MODE_NAMES, request.canonical, "canonical mode"))
        method = parse_method(_enum(METHOD_NAMES, request.method, "alignment method"))
        result = self.engine.align_text(ref_from_pb(request.source, "source"),
                                        ref_from_pb(request.target, "target"),
                                        request.text, mode, method)
        return aligner_pb2.AlignTextResponse(
            source_ids=list(result.source_ids), target_ids=list(result.target_ids),
            source_tokens=[printable_token(t) for t in result.source_tokens],
            target_tokens=[printable_token(t) for t in result.target_tokens],
            pairs=[aligner_pb2.AlignedPair(source_index=i, target_index=j)
                   for i, j in result.path],
        )

    @map_errors
    def AlignKnowledge(self, request_iterator, context) -> Iterator:
        first = next(request_iterator, None)
        if first is None:
            return
        if first.WhichOneof("payload") != "config":
            raise InvalidArgument("the first AlignKnowledge message must be a config")
        cfg = first.config
        config = KnowledgeConfig(
            source_fingerprint=cfg.source_fingerprint,
            target_fingerprint=cfg.target_fingerprint,
            mode=parse_mode(_enum(MODE_NAMES, cfg.canonical, "canonical mode")),
            method=parse_method(_enum(METHOD_NAMES, cfg.method, "alignment method")),
            top_k=cfg.top_k,
            logit_dtype=_enum(DTYPE_NAMES, cfg.logit_dtype, "logit dtype"),
        )
        for chunk in self.engine.align_knowledge(config, _batches(request_iterator)):
            yield aligner_pb2.AlignKnowledgeResponse(chunk=chunk)


def _batches(requests) -> Iterator:
    for request in requests:
        if request.WhichOneof("payload") != "batch":
            raise InvalidArgument("after the config, every AlignKnowledge message must be a batch")
        targets = {}
        for t in request.batch.targets:
            if not t.sample_id:
                raise InvalidArgument("target tokens without a sample_id")
            if t.sample_id in targets:
                raise InvalidArgument(f"target tokens for sample {t.sample_id!r} given twice "
                                      "in one batch")
            ids = None
            if t.HasField("token_ids"):
                ids = codec.decode(t.token_ids, expect_dtype="int32", expect_shape=(None,),
                                   name=f"targets[{t.sample_id}].token_ids")
            targets[t.sample_id] = TargetTokens(token_ids=ids, text=t.text)
        yield request.batch.chunk, targets
