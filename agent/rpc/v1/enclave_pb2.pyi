from agent.rpc.v1 import evidence_pb2 as _evidence_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetKeyBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeyBundle(_message.Message):
    __slots__ = ("bundle", "log_proof")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    LOG_PROOF_FIELD_NUMBER: _ClassVar[int]
    bundle: bytes
    log_proof: _evidence_pb2.LogProof
    def __init__(self, bundle: _Optional[bytes] = ..., log_proof: _Optional[_Union[_evidence_pb2.LogProof, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("sealed_request",)
    SEALED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    sealed_request: bytes
    def __init__(self, sealed_request: _Optional[bytes] = ...) -> None: ...

class StreamRecord(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    def __init__(self, record: _Optional[bytes] = ...) -> None: ...
