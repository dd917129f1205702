from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceEvidence(_message.Message):
    __slots__ = ("arch", "report", "certificate_chain_pem", "ocsp_responses", "rims")
    ARCH_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    OCSP_RESPONSES_FIELD_NUMBER: _ClassVar[int]
    RIMS_FIELD_NUMBER: _ClassVar[int]
    arch: str
    report: bytes
    certificate_chain_pem: bytes
    ocsp_responses: _containers.RepeatedScalarFieldContainer[bytes]
    rims: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, arch: _Optional[str] = ..., report: _Optional[bytes] = ..., certificate_chain_pem: _Optional[bytes] = ..., ocsp_responses: _Optional[_Iterable[bytes]] = ..., rims: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SnpEvidence(_message.Message):
    __slots__ = ("report", "certificates", "crl")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    CRL_FIELD_NUMBER: _ClassVar[int]
    report: bytes
    certificates: _containers.RepeatedScalarFieldContainer[bytes]
    crl: bytes
    def __init__(self, report: _Optional[bytes] = ..., certificates: _Optional[_Iterable[bytes]] = ..., crl: _Optional[bytes] = ...) -> None: ...

class TdxEvidence(_message.Message):
    __slots__ = ("quote", "collateral_json")
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    COLLATERAL_JSON_FIELD_NUMBER: _ClassVar[int]
    quote: bytes
    collateral_json: bytes
    def __init__(self, quote: _Optional[bytes] = ..., collateral_json: _Optional[bytes] = ...) -> None: ...

class CpuEvidence(_message.Message):
    __slots__ = ("snp", "tdx")
    SNP_FIELD_NUMBER: _ClassVar[int]
    TDX_FIELD_NUMBER: _ClassVar[int]
    snp: SnpEvidence
    tdx: TdxEvidence
    def __init__(self, snp: _Optional[_Union[SnpEvidence, _Mapping]] = ..., tdx: _Optional[_Union[TdxEvidence, _Mapping]] = ...) -> None: ...

class EvidenceBundle(_message.Message):
    __slots__ = ("cpu", "gpus", "switches", "cc_mode_on", "devtools_on")
    CPU_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    SWITCHES_FIELD_NUMBER: _ClassVar[int]
    CC_MODE_ON_FIELD_NUMBER: _ClassVar[int]
    DEVTOOLS_ON_FIELD_NUMBER: _ClassVar[int]
    cpu: CpuEvidence
    gpus: _containers.RepeatedCompositeFieldContainer[DeviceEvidence]
    switches: _containers.RepeatedCompositeFieldContainer[DeviceEvidence]
    cc_mode_on: bool
    devtools_on: bool
    def __init__(self, cpu: _Optional[_Union[CpuEvidence, _Mapping]] = ..., gpus: _Optional[_Iterable[_Union[DeviceEvidence, _Mapping]]] = ..., switches: _Optional[_Iterable[_Union[DeviceEvidence, _Mapping]]] = ..., cc_mode_on: _Optional[bool] = ..., devtools_on: _Optional[bool] = ...) -> None: ...

class LogProof(_message.Message):
    __slots__ = ("index", "tree_size", "hashes", "checkpoint")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    index: int
    tree_size: int
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    checkpoint: str
    def __init__(self, index: _Optional[int] = ..., tree_size: _Optional[int] = ..., hashes: _Optional[_Iterable[bytes]] = ..., checkpoint: _Optional[str] = ...) -> None: ...
