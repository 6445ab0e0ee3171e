from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SampleOutcomes(_message.Message):
    __slots__ = ("sample_ids", "columns")
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    sample_ids: _containers.RepeatedScalarFieldContainer[str]
    columns: _containers.RepeatedCompositeFieldContainer[OutcomeColumn]
    def __init__(self, sample_ids: _Optional[_Iterable[str]] = ..., columns: _Optional[_Iterable[_Union[OutcomeColumn, _Mapping]]] = ...) -> None: ...

class OutcomeColumn(_message.Message):
    __slots__ = ("metric", "values")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    metric: str
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, metric: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...
