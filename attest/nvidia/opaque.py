"""NVIDIA opaque data: the TLV list inside a signed MEASUREMENTS response.

The opaque data carries what the RIM selection and the claims need (driver and VBIOS versions,
project / SKU strings, the FWID that binds the report to the leaf certificate, the NVSwitch PDIs
of a protected-PCIe system). It is covered by the report signature, but nothing in SPDM gives it
a structure, so the parser here is the only thing between those bytes and a decision: every
entry is ``Type(2) | Length(2) | Value`` (little-endian), the list must fill the opaque data
exactly, a type may appear only once, and each known type is decoded with its size and alphabet
checked. Unknown types are kept raw (new firmware adds types; they are shown, never dropped).

GPU and NVSwitch reports number types 22..26 differently, so decoding takes the device kind.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from attest.nvidia.spdm import ReportParseError as _ReportParseError
from attest.nvidia.spdm import SpdmReport, parse_report

#: Type(2) + Length(2).
TLV_HEADER_LENGTH = 4
#: Bounded by the SPDM opaque limit (1024 bytes) / smallest entry (4 bytes).
MAX_OPAQUE_FIELDS = 256
#: FWID: a SHA-384 digest of the firmware that generated the attestation key.
FWID_LENGTH = 48
#: A PDI (platform device identity) is 8 bytes.
PDI_LENGTH = 8
#: GPU VBIOS version: 8 bytes, of which 5 form the text; the other 3 must be zero so that the
#: text form (used to pick the RIM and compared with it) is the whole value.
GPU_VBIOS_LENGTH = 8
#: SWITCH_GPU_PDIS starts with this many GPU PDIs (one HGX baseboard: 8 GPUs), then one byte
#: per NVLink port naming the GPU slot (0..7) on that port, 0xFF for none (NVIDIA's SDK layout).
SWITCH_GPU_PDI_SLOTS = 8
#: Port byte meaning "no GPU on this port".
PORT_UNCONNECTED = 0xFF
#: Type 255 is NVIDIA's INVALID marker: a report carrying it is not a valid report.
OPAQUE_INVALID = 255
#: Status bytes NVIDIA uses for NVDEC0 and protected-PCIe state.
STATUS_ENABLED = 0xAA
STATUS_DISABLED = 0x55


class OpaqueParseError(_ReportParseError):
    """Malformed opaque data (a subclass of the report parser's error type)."""


class DeviceKind(StrEnum):
    """GPU or NVSwitch: the two use different opaque tables, claims and RIM names."""

    GPU = "gpu"
    SWITCH = "switch"


class FeatureFlag(StrEnum):
    """OPAQUE_FIELD_ID_FEATURE_FLAG: the GPU's confidential-computing topology mode."""

    SPT = "SPT"  # single GPU pass-through
    MPT = "MPT"  # multi-GPU pass-through
    PPCIE = "PPCIE"  # protected PCIe (HGX with NVSwitches)


_FEATURE_FLAGS = {0: FeatureFlag.SPT, 1: FeatureFlag.MPT, 2: FeatureFlag.PPCIE}


@dataclass(frozen=True)
class OpaqueField:
    """One TLV entry as found; ``offset`` is relative to the start of the opaque data."""

    type: int
    name: str
    value: bytes
    offset: int


Decoder = Callable[[bytes, str], object]


def _err(name: str, message: str) -> OpaqueParseError:
    return OpaqueParseError(f"opaque {name}: {message}", field=name)


def _text(value: bytes, name: str, *, terminated: bool) -> str:
    """ASCII text, NUL-padded. ``terminated``: at least one NUL must end it."""
    body = value.rstrip(b"\x00")
    if terminated and len(body) == len(value):
        raise _err(name, "text is not NUL-terminated")
    if not all(0x20 <= c <= 0x7E for c in body):
        raise _err(name, "text holds bytes outside printable ASCII")
    return body.decode("ascii")


def _ascii(value: bytes, name: str) -> object:
    return _text(value, name, terminated=False)


def _ascii_nul(value: bytes, name: str) -> object:
    text = _text(value, name, terminated=True)
    if not text:
        raise _err(name, "empty")
    return text


def _switch_vbios(value: bytes, name: str) -> object:
    text = _text(value, name, terminated=False)
    if not text:
        raise _err(name, "empty")
    return text


def _raw(value: bytes, name: str) -> object:
    return value.hex()


def _u16(value: bytes, name: str) -> object:
    if len(value) != 2:
        raise _err(name, f"must be 2 bytes, got {len(value)}")
    return int.from_bytes(value, "little")


def _u32_list(value: bytes, name: str) -> object:
    if len(value) % 4:
        raise _err(name, f"length {len(value)} is not a multiple of 4")
    return [int.from_bytes(value[i : i + 4], "little") for i in range(0, len(value), 4)]


def _status(value: bytes, name: str) -> object:
    if len(value) != 1:
        raise _err(name, f"must be 1 byte, got {len(value)}")
    if value[0] == STATUS_ENABLED:
        return "enabled"
    if value[0] == STATUS_DISABLED:
        return "disabled"
    raise _err(name, f"status byte 0x{value[0]:02x} is neither 0xaa nor 0x55")


def _fwid(value: bytes, name: str) -> object:
    if len(value) != FWID_LENGTH:
        raise _err(name, f"must be {FWID_LENGTH} bytes, got {len(value)}")
    return value.hex()


def _pdi(value: bytes, name: str) -> object:
    if len(value) != PDI_LENGTH:
        raise _err(name, f"must be {PDI_LENGTH} bytes, got {len(value)}")
    return value.hex()


def _pdi_list(value: bytes, name: str) -> object:
    if not value or len(value) % PDI_LENGTH:
        raise _err(name, f"length {len(value)} is not a positive multiple of {PDI_LENGTH}")
    return [value[i : i + PDI_LENGTH].hex() for i in range(0, len(value), PDI_LENGTH)]


def _switch_gpu_pdis(value: bytes, name: str) -> object:
    head = SWITCH_GPU_PDI_SLOTS * PDI_LENGTH
    if len(value) < head:
        raise _err(name, f"length {len(value)} is below {head} ({SWITCH_GPU_PDI_SLOTS} PDIs)")
    ports = value[head:]
    bad = [p for p in ports if p >= SWITCH_GPU_PDI_SLOTS and p != PORT_UNCONNECTED]
    if bad:
        raise _err(name, f"port entry 0x{bad[0]:02x} names no GPU slot")
    return {
        "gpu_pdis": [value[i : i + PDI_LENGTH].hex() for i in range(0, head, PDI_LENGTH)],
        "ports": ports.hex(),
    }


def _gpu_vbios(value: bytes, name: str) -> object:
    return gpu_vbios_text(value, name)


def _feature_flag(value: bytes, name: str) -> object:
    code = _u16(value, name)
    assert isinstance(code, int)
    if code not in _FEATURE_FLAGS:
        raise _err(name, f"unknown feature flag {code}")
    return _FEATURE_FLAGS[code].value


def _invalid(value: bytes, name: str) -> object:
    raise _err(name, "type 255 (INVALID) present")


def gpu_vbios_text(value: bytes, name: str = "VBIOS_VERSION") -> str:
    """NVIDIA's text form of the 8-byte GPU VBIOS version: b3.b2.b1.b0.b4 in lower-case hex."""
    if len(value) != GPU_VBIOS_LENGTH:
        raise _err(name, f"must be {GPU_VBIOS_LENGTH} bytes, got {len(value)}")
    if any(value[5:]):
        raise _err(name, "bytes 5..7 must be zero (they have no text form)")
    return f"{value[3]:02x}.{value[2]:02x}.{value[1]:02x}.{value[0]:02x}.{value[4]:02x}"


_COMMON: dict[int, tuple[str, Decoder]] = {
    1: ("CERT_ISSUER_NAME", _raw),
    2: ("CERT_AUTHORITY_KEY_IDENTIFIER", _raw),
    3: ("DRIVER_VERSION", _ascii_nul),
    4: ("GPU_INFO", _raw),
    5: ("SKU", _raw),
    7: ("MANUFACTURER_ID", _raw),
    8: ("TAMPER_DETECTION", _raw),
    9: ("SMC", _raw),
    10: ("VPR", _raw),
    11: ("NVDEC0_STATUS", _status),
    12: ("MSRSCNT", _u32_list),
    13: ("CPRINFO", _raw),
    14: ("BOARD_ID", _raw),
    15: ("CHIP_SKU", _ascii),
    16: ("CHIP_SKU_MOD", _ascii),
    17: ("PROJECT", _ascii),
    18: ("PROJECT_SKU", _ascii),
    19: ("PROJECT_SKU_MOD", _ascii),
    20: ("FWID", _fwid),
    21: ("PROTECTED_PCIE_STATUS", _status),
    OPAQUE_INVALID: ("INVALID", _invalid),
}

#: GPU table (NVIDIA-EVIDENCE.md §2).
GPU_TYPES: Mapping[int, tuple[str, Decoder]] = MappingProxyType(
    {
        **_COMMON,
        6: ("VBIOS_VERSION", _gpu_vbios),
        22: ("SWITCH_PDI", _pdi_list),
        23: ("FLOORSWEPT_PORTS", _raw),
        24: ("POSITION_ID", _raw),
        25: ("LOCK_SWITCH_STATUS", _raw),
        32: ("GPU_LINK_CONN", _raw),
        33: ("SYS_ENABLE_STATUS", _raw),
        34: ("OPAQUE_DATA_VERSION", _u16),
        35: ("CHIP_INFO", _ascii_nul),
        36: ("FEATURE_FLAG", _feature_flag),
    }
)

#: NVSwitch table: same low types; 6 is ASCII, 22..26 are the switch's own.
SWITCH_TYPES: Mapping[int, tuple[str, Decoder]] = MappingProxyType(
    {
        **_COMMON,
        6: ("VBIOS_VERSION", _switch_vbios),
        22: ("DEVICE_PDI", _pdi),
        23: ("DISABLED_PORTS", _raw),
        24: ("SWITCH_POSITION_ID", _raw),
        25: ("SWITCH_LOCK_STATUS", _raw),
        26: ("SWITCH_GPU_PDIS", _switch_gpu_pdis),
    }
)


def _table(kind: DeviceKind) -> Mapping[int, tuple[str, Decoder]]:
    return GPU_TYPES if kind is DeviceKind.GPU else SWITCH_TYPES


@dataclass(frozen=True)
class OpaqueData:
    """Decoded opaque data. ``raw`` is the signed bytes; ``fields`` keeps every entry in order."""

    raw: bytes
    kind: DeviceKind
    fields: tuple[OpaqueField, ...]
    #: Field name -> decoded value (str, int, list, or hex for raw types); read-only.
    decoded: Mapping[str, object]

    def value(self, name: str) -> bytes | None:
        """The raw value of the named field, or None when absent."""
        for f in self.fields:
            if f.name == name:
                return f.value
        return None

    def _str(self, name: str) -> str | None:
        v = self.decoded.get(name)
        return v if isinstance(v, str) else None

    @property
    def driver_version(self) -> str | None:
        return self._str("DRIVER_VERSION")

    @property
    def vbios_version(self) -> str | None:
        """GPU: NVIDIA's text rule (lower-case hex); NVSwitch: the ASCII text as reported."""
        return self._str("VBIOS_VERSION")

    @property
    def project(self) -> str | None:
        return self._str("PROJECT")

    @property
    def project_sku(self) -> str | None:
        return self._str("PROJECT_SKU")

    @property
    def chip_sku(self) -> str | None:
        return self._str("CHIP_SKU")

    @property
    def chip_info(self) -> str | None:
        return self._str("CHIP_INFO")

    @property
    def fwid(self) -> bytes | None:
        return self.value("FWID")

    @property
    def feature_flag(self) -> FeatureFlag | None:
        v = self._str("FEATURE_FLAG")
        return FeatureFlag(v) if v is not None else None

    @property
    def protected_pcie_status(self) -> str | None:
        return self._str("PROTECTED_PCIE_STATUS")

    @property
    def switch_pdis(self) -> tuple[bytes, ...]:
        """GPU: the PDI of the switch on each NVLink, as found (NVIDIA stores them reversed)."""
        raw = self.value("SWITCH_PDI") if self.kind is DeviceKind.GPU else None
        if raw is None:
            return ()
        return tuple(raw[i : i + PDI_LENGTH] for i in range(0, len(raw), PDI_LENGTH))

    @property
    def device_pdi(self) -> bytes | None:
        """NVSwitch: its own PDI."""
        return self.value("DEVICE_PDI") if self.kind is DeviceKind.SWITCH else None

    @property
    def switch_gpu_pdis(self) -> tuple[bytes, ...]:
        """NVSwitch: the PDIs of the GPU slots it connects (the first 64 bytes of type 26)."""
        raw = self.value("SWITCH_GPU_PDIS") if self.kind is DeviceKind.SWITCH else None
        if raw is None:
            return ()
        head = SWITCH_GPU_PDI_SLOTS * PDI_LENGTH
        return tuple(raw[i : i + PDI_LENGTH] for i in range(0, head, PDI_LENGTH))

    def to_json(self) -> dict[str, object]:
        """Every field by name, decoded; unknown types as ``UNKNOWN_<type>`` with hex values."""
        return dict(self.decoded)


def parse_opaque(data: bytes, kind: DeviceKind) -> OpaqueData:
    """Parse and decode opaque data of a ``kind`` device. Raises only ``OpaqueParseError``."""
    data = bytes(data)
    table = _table(kind)
    fields: list[OpaqueField] = []
    decoded: dict[str, object] = {}
    seen: set[int] = set()
    off = 0
    while off < len(data):
        if len(data) - off < TLV_HEADER_LENGTH:
            raise OpaqueParseError(
                f"{len(data) - off} bytes left, too few for an entry header",
                field="opaque",
                offset=off,
            )
        if len(fields) == MAX_OPAQUE_FIELDS:
            raise OpaqueParseError(
                f"more than {MAX_OPAQUE_FIELDS} entries", field="opaque", offset=off
            )
        ftype = int.from_bytes(data[off : off + 2], "little")
        length = int.from_bytes(data[off + 2 : off + 4], "little")
        start = off + TLV_HEADER_LENGTH
        if start + length > len(data):
            raise OpaqueParseError(
                f"entry type {ftype} of length {length} runs past the opaque data",
                field="opaque",
                offset=off,
            )
        if ftype in seen:
            raise OpaqueParseError(f"type {ftype} appears twice", field="opaque", offset=off)
        seen.add(ftype)
        value = data[start : start + length]
        name, decoder = table.get(ftype, (f"UNKNOWN_{ftype}", _raw))
        try:
            decoded[name] = decoder(value, name)
        except OpaqueParseError as exc:
            raise OpaqueParseError(str(exc), offset=off) from None
        fields.append(OpaqueField(type=ftype, name=name, value=value, offset=off))
        off = start + length
    return OpaqueData(raw=data, kind=kind, fields=tuple(fields), decoded=MappingProxyType(decoded))


@dataclass(frozen=True)
class DeviceReport:
    """A fully parsed report: SPDM framing plus decoded opaque data, for a known device kind."""

    spdm: SpdmReport
    opaque: OpaqueData

    @property
    def raw(self) -> bytes:
        return self.spdm.raw

    @property
    def kind(self) -> DeviceKind:
        return self.opaque.kind

    @property
    def measurements(self) -> Mapping[int, bytes]:
        """SPDM block index (1-based) -> value."""
        return self.spdm.measurements

    @property
    def nonce(self) -> bytes:
        return self.spdm.nonce


def parse_device_report(data: bytes, kind: DeviceKind) -> DeviceReport:
    """Parse a report and its opaque data. Raises only ``ReportParseError`` (and subclasses)."""
    spdm = parse_report(data)
    return DeviceReport(spdm=spdm, opaque=parse_opaque(spdm.response.opaque_data, kind))


class ReportCache:
    """Parsed reports keyed by their exact bytes and device kind (bounded LRU, thread-safe).

    Parsing is deterministic, so a hit is exactly what a fresh parse would return; it saves the
    parse (about a fifth of the cost of one signature check) when the same report is verified
    again. Parse failures are not cached.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[DeviceKind, bytes], DeviceReport] = OrderedDict()
        self._lock = threading.Lock()

    def parse(self, data: bytes, kind: DeviceKind) -> DeviceReport:
        key = (kind, bytes(data))
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        report = parse_device_report(key[1], kind)
        with self._lock:
            self._entries[key] = report
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return report
