from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CanonicalMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANONICAL_MODE_UNSPECIFIED: _ClassVar[CanonicalMode]
    CANONICAL_MODE_SURFACE: _ClassVar[CanonicalMode]
    CANONICAL_MODE_FATE: _ClassVar[CanonicalMode]
CANONICAL_MODE_UNSPECIFIED: CanonicalMode
CANONICAL_MODE_SURFACE: CanonicalMode
CANONICAL_MODE_FATE: CanonicalMode

class TokenizerFile(_message.Message):
    __slots__ = ("name", "content")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: bytes
    def __init__(self, name: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class TokenizerRef(_message.Message):
    __slots__ = ("fingerprint", "builtin")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    builtin: str
    def __init__(self, fingerprint: _Optional[str] = ..., builtin: _Optional[str] = ...) -> None: ...

class TokenizerInfo(_message.Message):
    __slots__ = ("fingerprint", "vocab_size", "name", "special_token_ids", "word_boundary_marker")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    WORD_BOUNDARY_MARKER_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    vocab_size: int
    name: str
    special_token_ids: _containers.RepeatedScalarFieldContainer[int]
    word_boundary_marker: str
    def __init__(self, fingerprint: _Optional[str] = ..., vocab_size: _Optional[int] = ..., name: _Optional[str] = ..., special_token_ids: _Optional[_Iterable[int]] = ..., word_boundary_marker: _Optional[str] = ...) -> None: ...
