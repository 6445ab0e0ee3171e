from fedmkt.wire.v1 import knowledge_pb2 as _knowledge_pb2
from fedmkt.wire.v1 import tensor_pb2 as _tensor_pb2
from fedmkt.wire.v1 import aligner_pb2 as _aligner_pb2
from fedmkt.wire.v1 import tokenizer_pb2 as _tokenizer_pb2
from fedmkt.wire.v1 import outcomes_pb2 as _outcomes_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_SERVER: _ClassVar[Role]
    ROLE_CLIENT: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
ROLE_SERVER: Role
ROLE_CLIENT: Role

class RunRef(_message.Message):
    __slots__ = ("run_id", "round")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ParticipantInfo(_message.Message):
    __slots__ = ("name", "role", "model", "tokenizer", "trainable_parameters", "total_parameters", "device", "dtype", "public_samples", "private_samples", "latest_adapter_round")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LATEST_ADAPTER_ROUND_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    model: str
    tokenizer: _tokenizer_pb2.TokenizerInfo
    trainable_parameters: int
    total_parameters: int
    device: str
    dtype: str
    public_samples: int
    private_samples: int
    latest_adapter_round: int
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., model: _Optional[str] = ..., tokenizer: _Optional[_Union[_tokenizer_pb2.TokenizerInfo, _Mapping]] = ..., trainable_parameters: _Optional[int] = ..., total_parameters: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., public_samples: _Optional[int] = ..., private_samples: _Optional[int] = ..., latest_adapter_round: _Optional[int] = ...) -> None: ...

class TrainLocalRequest(_message.Message):
    __slots__ = ("run", "epochs")
    RUN_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    epochs: int
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., epochs: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "completed", "total", "metrics", "done", "message", "outcomes")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    step: str
    completed: int
    total: int
    metrics: _containers.ScalarMap[str, float]
    done: bool
    message: str
    outcomes: _outcomes_pb2.SampleOutcomes
    def __init__(self, step: _Optional[str] = ..., completed: _Optional[int] = ..., total: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., done: _Optional[bool] = ..., message: _Optional[str] = ..., outcomes: _Optional[_Union[_outcomes_pb2.SampleOutcomes, _Mapping]] = ...) -> None: ...

class ComputeKnowledgeRequest(_message.Message):
    __slots__ = ("run", "top_k", "logit_dtype")
    RUN_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    LOGIT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    top_k: int
    logit_dtype: _tensor_pb2.DType
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., top_k: _Optional[int] = ..., logit_dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ...) -> None: ...

class PublicTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PublicTokensChunk(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[_aligner_pb2.TargetTokens]
    def __init__(self, samples: _Optional[_Iterable[_Union[_aligner_pb2.TargetTokens, _Mapping]]] = ...) -> None: ...

class ReceiveKnowledgeResponse(_message.Message):
    __slots__ = ("samples", "digest")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    samples: int
    digest: str
    def __init__(self, samples: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class DistillRequest(_message.Message):
    __slots__ = ("run", "strategy", "kd_alpha", "temperature", "epochs")
    RUN_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    KD_ALPHA_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    strategy: str
    kd_alpha: float
    temperature: float
    epochs: int
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., strategy: _Optional[str] = ..., kd_alpha: _Optional[float] = ..., temperature: _Optional[float] = ..., epochs: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("run", "split")
    RUN_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    split: str
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., split: _Optional[str] = ...) -> None: ...

class FetchAdapterRequest(_message.Message):
    __slots__ = ("round", "run_id")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    round: int
    run_id: str
    def __init__(self, round: _Optional[int] = ..., run_id: _Optional[str] = ...) -> None: ...

class AdapterChunk(_message.Message):
    __slots__ = ("round", "digest", "data", "last", "peft_config_json", "base_model")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    PEFT_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    round: int
    digest: str
    data: bytes
    last: bool
    peft_config_json: str
    base_model: str
    def __init__(self, round: _Optional[int] = ..., digest: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., peft_config_json: _Optional[str] = ..., base_model: _Optional[str] = ...) -> None: ...

class PushAdapterResponse(_message.Message):
    __slots__ = ("tensors", "digest")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    tensors: int
    digest: str
    def __init__(self, tensors: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...
