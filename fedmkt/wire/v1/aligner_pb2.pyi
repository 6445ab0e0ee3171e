from fedmkt.wire.v1 import knowledge_pb2 as _knowledge_pb2
from fedmkt.wire.v1 import tensor_pb2 as _tensor_pb2
from fedmkt.wire.v1 import tokenizer_pb2 as _tokenizer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SequenceAlignment(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEQUENCE_ALIGNMENT_UNSPECIFIED: _ClassVar[SequenceAlignment]
    SEQUENCE_ALIGNMENT_DTW: _ClassVar[SequenceAlignment]
    SEQUENCE_ALIGNMENT_OFFSETS: _ClassVar[SequenceAlignment]
SEQUENCE_ALIGNMENT_UNSPECIFIED: SequenceAlignment
SEQUENCE_ALIGNMENT_DTW: SequenceAlignment
SEQUENCE_ALIGNMENT_OFFSETS: SequenceAlignment

class RegisterTokenizerRequest(_message.Message):
    __slots__ = ("name", "files", "builtin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    files: _containers.RepeatedCompositeFieldContainer[_tokenizer_pb2.TokenizerFile]
    builtin: str
    def __init__(self, name: _Optional[str] = ..., files: _Optional[_Iterable[_Union[_tokenizer_pb2.TokenizerFile, _Mapping]]] = ..., builtin: _Optional[str] = ...) -> None: ...

class GetTokenizerRequest(_message.Message):
    __slots__ = ("tokenizer",)
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    tokenizer: _tokenizer_pb2.TokenizerRef
    def __init__(self, tokenizer: _Optional[_Union[_tokenizer_pb2.TokenizerRef, _Mapping]] = ...) -> None: ...

class ListTokenizersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokenizersResponse(_message.Message):
    __slots__ = ("tokenizers",)
    TOKENIZERS_FIELD_NUMBER: _ClassVar[int]
    tokenizers: _containers.RepeatedCompositeFieldContainer[_tokenizer_pb2.TokenizerInfo]
    def __init__(self, tokenizers: _Optional[_Iterable[_Union[_tokenizer_pb2.TokenizerInfo, _Mapping]]] = ...) -> None: ...

class GetVocabMapRequest(_message.Message):
    __slots__ = ("source", "target", "canonical")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_FIELD_NUMBER: _ClassVar[int]
    source: _tokenizer_pb2.TokenizerRef
    target: _tokenizer_pb2.TokenizerRef
    canonical: _tokenizer_pb2.CanonicalMode
    def __init__(self, source: _Optional[_Union[_tokenizer_pb2.TokenizerRef, _Mapping]] = ..., target: _Optional[_Union[_tokenizer_pb2.TokenizerRef, _Mapping]] = ..., canonical: _Optional[_Union[_tokenizer_pb2.CanonicalMode, str]] = ...) -> None: ...

class VocabMap(_message.Message):
    __slots__ = ("source_fingerprint", "target_fingerprint", "canonical", "source_to_target", "from_cache", "build_seconds", "exact_matches")
    SOURCE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TO_TARGET_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    BUILD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXACT_MATCHES_FIELD_NUMBER: _ClassVar[int]
    source_fingerprint: str
    target_fingerprint: str
    canonical: _tokenizer_pb2.CanonicalMode
    source_to_target: _tensor_pb2.Tensor
    from_cache: bool
    build_seconds: float
    exact_matches: int
    def __init__(self, source_fingerprint: _Optional[str] = ..., target_fingerprint: _Optional[str] = ..., canonical: _Optional[_Union[_tokenizer_pb2.CanonicalMode, str]] = ..., source_to_target: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., from_cache: _Optional[bool] = ..., build_seconds: _Optional[float] = ..., exact_matches: _Optional[int] = ...) -> None: ...

class AlignTextRequest(_message.Message):
    __slots__ = ("source", "target", "text", "canonical", "method")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    source: _tokenizer_pb2.TokenizerRef
    target: _tokenizer_pb2.TokenizerRef
    text: str
    canonical: _tokenizer_pb2.CanonicalMode
    method: SequenceAlignment
    def __init__(self, source: _Optional[_Union[_tokenizer_pb2.TokenizerRef, _Mapping]] = ..., target: _Optional[_Union[_tokenizer_pb2.TokenizerRef, _Mapping]] = ..., text: _Optional[str] = ..., canonical: _Optional[_Union[_tokenizer_pb2.CanonicalMode, str]] = ..., method: _Optional[_Union[SequenceAlignment, str]] = ...) -> None: ...

class AlignedPair(_message.Message):
    __slots__ = ("source_index", "target_index")
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TARGET_INDEX_FIELD_NUMBER: _ClassVar[int]
    source_index: int
    target_index: int
    def __init__(self, source_index: _Optional[int] = ..., target_index: _Optional[int] = ...) -> None: ...

class AlignTextResponse(_message.Message):
    __slots__ = ("source_ids", "target_ids", "source_tokens", "target_tokens", "pairs")
    SOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    TARGET_IDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TARGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    source_ids: _containers.RepeatedScalarFieldContainer[int]
    target_ids: _containers.RepeatedScalarFieldContainer[int]
    source_tokens: _containers.RepeatedScalarFieldContainer[str]
    target_tokens: _containers.RepeatedScalarFieldContainer[str]
    pairs: _containers.RepeatedCompositeFieldContainer[AlignedPair]
    def __init__(self, source_ids: _Optional[_Iterable[int]] = ..., target_ids: _Optional[_Iterable[int]] = ..., source_tokens: _Optional[_Iterable[str]] = ..., target_tokens: _Optional[_Iterable[str]] = ..., pairs: _Optional[_Iterable[_Union[AlignedPair, _Mapping]]] = ...) -> None: ...

class AlignKnowledgeConfig(_message.Message):
    __slots__ = ("source_fingerprint", "target_fingerprint", "canonical", "method", "top_k", "logit_dtype")
    SOURCE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    LOGIT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    source_fingerprint: str
    target_fingerprint: str
    canonical: _tokenizer_pb2.CanonicalMode
    method: SequenceAlignment
    top_k: int
    logit_dtype: _tensor_pb2.DType
    def __init__(self, source_fingerprint: _Optional[str] = ..., target_fingerprint: _Optional[str] = ..., canonical: _Optional[_Union[_tokenizer_pb2.CanonicalMode, str]] = ..., method: _Optional[_Union[SequenceAlignment, str]] = ..., top_k: _Optional[int] = ..., logit_dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ...) -> None: ...

class TargetTokens(_message.Message):
    __slots__ = ("sample_id", "token_ids", "text")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    token_ids: _tensor_pb2.Tensor
    text: str
    def __init__(self, sample_id: _Optional[str] = ..., token_ids: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class AlignKnowledgeBatch(_message.Message):
    __slots__ = ("chunk", "targets")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    chunk: _knowledge_pb2.KnowledgeChunk
    targets: _containers.RepeatedCompositeFieldContainer[TargetTokens]
    def __init__(self, chunk: _Optional[_Union[_knowledge_pb2.KnowledgeChunk, _Mapping]] = ..., targets: _Optional[_Iterable[_Union[TargetTokens, _Mapping]]] = ...) -> None: ...

class AlignKnowledgeRequest(_message.Message):
    __slots__ = ("config", "batch")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    config: AlignKnowledgeConfig
    batch: AlignKnowledgeBatch
    def __init__(self, config: _Optional[_Union[AlignKnowledgeConfig, _Mapping]] = ..., batch: _Optional[_Union[AlignKnowledgeBatch, _Mapping]] = ...) -> None: ...

class AlignKnowledgeResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: _knowledge_pb2.KnowledgeChunk
    def __init__(self, chunk: _Optional[_Union[_knowledge_pb2.KnowledgeChunk, _Mapping]] = ...) -> None: ...
