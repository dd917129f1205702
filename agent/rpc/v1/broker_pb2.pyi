from agent.rpc.v1 import evidence_pb2 as _evidence_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChallengeRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ChallengeResponse(_message.Message):
    __slots__ = ("nonce", "expires_at_unix", "protocol_label")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_LABEL_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    expires_at_unix: int
    protocol_label: str
    def __init__(self, nonce: _Optional[bytes] = ..., expires_at_unix: _Optional[int] = ..., protocol_label: _Optional[str] = ...) -> None: ...

class AttestRequest(_message.Message):
    __slots__ = ("nonce", "enclave_public_key", "model_id", "evidence")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ENCLAVE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    enclave_public_key: bytes
    model_id: str
    evidence: _evidence_pb2.EvidenceBundle
    def __init__(self, nonce: _Optional[bytes] = ..., enclave_public_key: _Optional[bytes] = ..., model_id: _Optional[str] = ..., evidence: _Optional[_Union[_evidence_pb2.EvidenceBundle, _Mapping]] = ...) -> None: ...

class AttestResponse(_message.Message):
    __slots__ = ("result", "status", "findings", "log_proof")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    LOG_PROOF_FIELD_NUMBER: _ClassVar[int]
    result: str
    status: str
    findings: _containers.RepeatedScalarFieldContainer[str]
    log_proof: _evidence_pb2.LogProof
    def __init__(self, result: _Optional[str] = ..., status: _Optional[str] = ..., findings: _Optional[_Iterable[str]] = ..., log_proof: _Optional[_Union[_evidence_pb2.LogProof, _Mapping]] = ...) -> None: ...

class ReleaseKeyRequest(_message.Message):
    __slots__ = ("result", "model_id")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    result: str
    model_id: str
    def __init__(self, result: _Optional[str] = ..., model_id: _Optional[str] = ...) -> None: ...

class ReleaseKeyResponse(_message.Message):
    __slots__ = ("sealed_key", "suite", "key_id", "model_version", "manifest_digest", "log_proof")
    SEALED_KEY_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LOG_PROOF_FIELD_NUMBER: _ClassVar[int]
    sealed_key: bytes
    suite: str
    key_id: str
    model_version: int
    manifest_digest: bytes
    log_proof: _evidence_pb2.LogProof
    def __init__(self, sealed_key: _Optional[bytes] = ..., suite: _Optional[str] = ..., key_id: _Optional[str] = ..., model_version: _Optional[int] = ..., manifest_digest: _Optional[bytes] = ..., log_proof: _Optional[_Union[_evidence_pb2.LogProof, _Mapping]] = ...) -> None: ...

class RegisterModelRequest(_message.Message):
    __slots__ = ("model_id", "model_version", "data_key", "policy_json", "manifest_digest")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_version: int
    data_key: bytes
    policy_json: str
    manifest_digest: bytes
    def __init__(self, model_id: _Optional[str] = ..., model_version: _Optional[int] = ..., data_key: _Optional[bytes] = ..., policy_json: _Optional[str] = ..., manifest_digest: _Optional[bytes] = ...) -> None: ...

class RegisterModelResponse(_message.Message):
    __slots__ = ("key_id", "policy_digest")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    policy_digest: str
    def __init__(self, key_id: _Optional[str] = ..., policy_digest: _Optional[str] = ...) -> None: ...
