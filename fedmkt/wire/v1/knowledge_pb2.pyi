from fedmkt.wire.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KnowledgeHeader(_message.Message):
    __slots__ = ("run_id", "round", "source", "tokenizer_fingerprint", "top_k")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    source: str
    tokenizer_fingerprint: str
    top_k: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., source: _Optional[str] = ..., tokenizer_fingerprint: _Optional[str] = ..., top_k: _Optional[int] = ...) -> None: ...

class AlignmentStats(_message.Message):
    __slots__ = ("positions", "aligned", "fallback")
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    positions: int
    aligned: int
    fallback: int
    def __init__(self, positions: _Optional[int] = ..., aligned: _Optional[int] = ..., fallback: _Optional[int] = ...) -> None: ...

class SampleKnowledge(_message.Message):
    __slots__ = ("sample_id", "token_ids", "position_start", "topk_ids", "topk_logits", "loss", "last_part", "stats", "part_index")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    POSITION_START_FIELD_NUMBER: _ClassVar[int]
    TOPK_IDS_FIELD_NUMBER: _ClassVar[int]
    TOPK_LOGITS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LAST_PART_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    PART_INDEX_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    token_ids: _tensor_pb2.Tensor
    position_start: int
    topk_ids: _tensor_pb2.Tensor
    topk_logits: _tensor_pb2.Tensor
    loss: float
    last_part: bool
    stats: AlignmentStats
    part_index: int
    def __init__(self, sample_id: _Optional[str] = ..., token_ids: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., position_start: _Optional[int] = ..., topk_ids: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., topk_logits: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., loss: _Optional[float] = ..., last_part: _Optional[bool] = ..., stats: _Optional[_Union[AlignmentStats, _Mapping]] = ..., part_index: _Optional[int] = ...) -> None: ...

class KnowledgeChunk(_message.Message):
    __slots__ = ("header", "samples")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    header: KnowledgeHeader
    samples: _containers.RepeatedCompositeFieldContainer[SampleKnowledge]
    def __init__(self, header: _Optional[_Union[KnowledgeHeader, _Mapping]] = ..., samples: _Optional[_Iterable[_Union[SampleKnowledge, _Mapping]]] = ...) -> None: ...
