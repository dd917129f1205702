"""Strict parser for NVIDIA attestation reports: SPDM 1.1 GET_MEASUREMENTS ‖ MEASUREMENTS.

An NVIDIA GPU or NVSwitch attestation report is the 37-byte GET_MEASUREMENTS request the driver
sent, followed by the device's signed MEASUREMENTS response (layout: docs/gpu-verifier.md and
NVIDIA-EVIDENCE.md §2; all integers little-endian). The signature covers the request and the
response up to the signature, so both halves are kept byte for byte.

NVIDIA's own parser checks none of the header bytes, never checks the measurement value type,
and ignores trailing bytes. Here every header byte, count and length is checked and anything left
over is an error, so a report has exactly one reading. The opaque data is kept as bytes and
decoded by ``attest.nvidia.opaque``; this module knows only the SPDM framing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from attest.errors import ParseError

#: SPDMVersion byte of SPDM 1.1, the version NVIDIA GPUs and NVSwitches speak.
SPDM_VERSION_11 = 0x11
#: RequestResponseCode of GET_MEASUREMENTS (SPDM 1.1 table 4).
GET_MEASUREMENTS = 0xE0
#: RequestResponseCode of MEASUREMENTS.
MEASUREMENTS = 0x60
#: GET_MEASUREMENTS Param1: bit 0 = "signature requested". A report without a signature proves
#: nothing, and bits 1..7 are reserved in SPDM 1.1, so the byte must be exactly 0x01.
REQUEST_PARAM1_SIGNATURE = 0x01
#: GET_MEASUREMENTS Param2: 0xFF asks for every measurement block. Reference values cover every
#: index, so a report that asked for fewer blocks cannot be appraised.
REQUEST_PARAM2_ALL_BLOCKS = 0xFF
#: Size of the requester and responder nonces (SPDM 1.1).
NONCE_LENGTH = 32
#: Request = version, code, param1, param2, nonce(32), slot id.
REQUEST_LENGTH = 4 + NONCE_LENGTH + 1
#: Highest certificate slot in SPDM 1.1 (slots 0..7).
MAX_SLOT_ID = 7
#: Response header before the measurement record: version, code, param1, param2,
#: NumberOfBlocks(1), MeasurementRecordLength(3).
RESPONSE_HEADER_LENGTH = 8
#: ECDSA P-384 signature as raw r‖s (48 + 48 bytes, big-endian).
SIGNATURE_LENGTH = 96
#: SPDM 1.1: "OpaqueLength ... shall not be greater than 1024 bytes". Real GPU reports carry
#: 354..579 bytes and switch reports 292.
MAX_OPAQUE_LENGTH = 1024
#: MeasurementSpecification bit 0 = DMTF; the only specification SPDM 1.1 defines.
MEASUREMENT_SPEC_DMTF = 0x01
#: Per-block header: Index(1), MeasurementSpecification(1), MeasurementSize(2).
BLOCK_HEADER_LENGTH = 4
#: DMTF measurement header: DMTFSpecMeasurementValueType(1), DMTFSpecMeasurementValueSize(2).
DMTF_HEADER_LENGTH = 3
#: DMTF value types in digest form (bit 7 clear): 0 immutable ROM, 1 mutable firmware,
#: 2 hardware configuration, 3 firmware configuration, 4 measurement manifest (SPDM 1.1 table 45).
#: Raw bit streams (bit 7 set) cannot be compared with NVIDIA's SHA-384 reference values.
DIGEST_VALUE_TYPES = frozenset(range(5))
#: Every NVIDIA measurement is a SHA-384 digest (the RIMs hold SHA-384 values).
MEASUREMENT_VALUE_LENGTH = 48
#: Block indexes 1..0xFE; index 0 is reserved and 0xFF means "all" in the request.
MIN_BLOCK_INDEX = 1
MAX_BLOCK_INDEX = 0xFE
#: NumberOfBlocks is one byte; real reports hold 64 (GPU) or 31 (NVSwitch).
MAX_BLOCKS = 0xFE
#: Largest measurement record the bounds above allow: MAX_BLOCKS blocks of 4+3+48 bytes.
MAX_RECORD_LENGTH = MAX_BLOCKS * (
    BLOCK_HEADER_LENGTH + DMTF_HEADER_LENGTH + MEASUREMENT_VALUE_LENGTH
)
#: Largest report the bounds above allow; anything longer is refused before any parsing.
#: Real reports: 2172 (NVSwitch) to 4274 bytes (PPCIe GPU).
MAX_REPORT_LENGTH = (
    REQUEST_LENGTH
    + RESPONSE_HEADER_LENGTH
    + MAX_RECORD_LENGTH
    + NONCE_LENGTH
    + 2
    + MAX_OPAQUE_LENGTH
    + SIGNATURE_LENGTH
)
#: Smallest possible report: one block, no opaque data.
MIN_REPORT_LENGTH = (
    REQUEST_LENGTH
    + RESPONSE_HEADER_LENGTH
    + BLOCK_HEADER_LENGTH
    + DMTF_HEADER_LENGTH
    + MEASUREMENT_VALUE_LENGTH
    + NONCE_LENGTH
    + 2
    + SIGNATURE_LENGTH
)


class ReportParseError(ParseError):
    """The bytes are not a well-formed NVIDIA SPDM 1.1 attestation report.

    The single error type of report parsing (``attest.nvidia.opaque`` raises a subclass), so a
    caller that feeds arbitrary bytes can rely on seeing nothing else.
    """


def _u16(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 2], "little")


def _u24(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 3], "little")


@dataclass(frozen=True)
class MeasurementsRequest:
    """The GET_MEASUREMENTS request as the device received it (37 bytes, kept verbatim)."""

    raw: bytes
    version: int
    param1: int
    param2: int
    nonce: bytes
    slot_id: int

    def header_json(self) -> dict[str, object]:
        return {
            "spdm_version": f"0x{self.version:02x}",
            "request_code": f"0x{self.raw[1]:02x}",
            "param1": f"0x{self.param1:02x}",
            "param2": f"0x{self.param2:02x}",
            "slot_id": self.slot_id,
        }


@dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block. ``index`` is the SPDM block index (1-based)."""

    index: int
    specification: int
    value_type: int
    value: bytes
    offset: int


@dataclass(frozen=True)
class MeasurementsResponse:
    """The MEASUREMENTS response, verbatim in ``raw`` (signature included)."""

    raw: bytes
    version: int
    param1: int
    param2: int
    number_of_blocks: int
    record_length: int
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque_data: bytes
    signature: bytes

    def header_json(self) -> dict[str, object]:
        return {
            "spdm_version": f"0x{self.version:02x}",
            "response_code": f"0x{self.raw[1]:02x}",
            "param1": f"0x{self.param1:02x}",
            "param2": f"0x{self.param2:02x}",
            "number_of_blocks": self.number_of_blocks,
            "measurement_record_length": self.record_length,
            "responder_nonce": self.responder_nonce.hex(),
            "opaque_length": len(self.opaque_data),
        }


@dataclass(frozen=True)
class SpdmReport:
    """A parsed report. ``raw`` is the whole input; ``signed_bytes`` is what the signature covers."""

    raw: bytes
    request: MeasurementsRequest
    response: MeasurementsResponse
    #: Block index -> 48-byte value, in report order (read-only view).
    measurements: Mapping[int, bytes] = field(repr=False)

    @property
    def signed_bytes(self) -> bytes:
        """Request ‖ response up to (not including) the signature."""
        return self.raw[:-SIGNATURE_LENGTH]

    @property
    def signature(self) -> bytes:
        return self.response.signature

    @property
    def nonce(self) -> bytes:
        """The requester's nonce: the freshness value the caller chose."""
        return self.request.nonce


def parse_request(data: bytes) -> MeasurementsRequest:
    """Parse exactly the 37-byte GET_MEASUREMENTS request NVIDIA drivers send."""
    if len(data) != REQUEST_LENGTH:
        raise ReportParseError(
            f"GET_MEASUREMENTS request must be {REQUEST_LENGTH} bytes, got {len(data)}",
            field="request",
            offset=0,
        )
    if data[0] != SPDM_VERSION_11:
        raise ReportParseError(
            f"request SPDMVersion 0x{data[0]:02x}, expected 0x{SPDM_VERSION_11:02x}",
            field="request.SPDMVersion",
            offset=0,
        )
    if data[1] != GET_MEASUREMENTS:
        raise ReportParseError(
            f"request code 0x{data[1]:02x}, expected GET_MEASUREMENTS 0x{GET_MEASUREMENTS:02x}",
            field="request.RequestResponseCode",
            offset=1,
        )
    if data[2] != REQUEST_PARAM1_SIGNATURE:
        raise ReportParseError(
            f"request Param1 0x{data[2]:02x}, expected 0x{REQUEST_PARAM1_SIGNATURE:02x}"
            " (signature requested, reserved bits clear)",
            field="request.Param1",
            offset=2,
        )
    if data[3] != REQUEST_PARAM2_ALL_BLOCKS:
        raise ReportParseError(
            f"request Param2 0x{data[3]:02x}, expected 0x{REQUEST_PARAM2_ALL_BLOCKS:02x}"
            " (all measurement blocks)",
            field="request.Param2",
            offset=3,
        )
    slot = data[4 + NONCE_LENGTH]
    if slot > MAX_SLOT_ID:
        raise ReportParseError(
            f"request SlotID {slot} is above {MAX_SLOT_ID}",
            field="request.SlotID",
            offset=4 + NONCE_LENGTH,
        )
    return MeasurementsRequest(
        raw=bytes(data),
        version=data[0],
        param1=data[2],
        param2=data[3],
        nonce=bytes(data[4 : 4 + NONCE_LENGTH]),
        slot_id=slot,
    )


def _parse_blocks(
    resp: bytes, start: int, length: int, count: int, base: int
) -> tuple[MeasurementBlock, ...]:
    """Parse ``count`` blocks that must fill resp[start:start+length] exactly."""
    end = start + length
    off = start
    blocks: list[MeasurementBlock] = []
    previous = 0
    while off < end:
        if end - off < BLOCK_HEADER_LENGTH + DMTF_HEADER_LENGTH:
            raise ReportParseError(
                "measurement record ends inside a block header",
                field="MeasurementRecord",
                offset=base + off,
            )
        index = resp[off]
        spec = resp[off + 1]
        size = _u16(resp, off + 2)
        where = f"block {len(blocks) + 1} (index {index})"
        if not MIN_BLOCK_INDEX <= index <= MAX_BLOCK_INDEX:
            raise ReportParseError(
                f"{where}: index outside {MIN_BLOCK_INDEX}..{MAX_BLOCK_INDEX}",
                field="Index",
                offset=base + off,
            )
        if index <= previous:
            raise ReportParseError(
                f"{where}: indexes must be strictly increasing (previous {previous})",
                field="Index",
                offset=base + off,
            )
        if spec != MEASUREMENT_SPEC_DMTF:
            raise ReportParseError(
                f"{where}: MeasurementSpecification 0x{spec:02x}, expected 0x01 (DMTF)",
                field="MeasurementSpecification",
                offset=base + off + 1,
            )
        value_type = resp[off + 4]
        value_size = _u16(resp, off + 5)
        if size != DMTF_HEADER_LENGTH + value_size:
            raise ReportParseError(
                f"{where}: MeasurementSize {size} != 3 + DMTF value size {value_size}",
                field="MeasurementSize",
                offset=base + off + 2,
            )
        if value_type not in DIGEST_VALUE_TYPES:
            raise ReportParseError(
                f"{where}: DMTF value type 0x{value_type:02x} is not a digest type",
                field="DMTFSpecMeasurementValueType",
                offset=base + off + 4,
            )
        if value_size != MEASUREMENT_VALUE_LENGTH:
            raise ReportParseError(
                f"{where}: value size {value_size}, expected {MEASUREMENT_VALUE_LENGTH} (SHA-384)",
                field="DMTFSpecMeasurementValueSize",
                offset=base + off + 5,
            )
        value_off = off + BLOCK_HEADER_LENGTH + DMTF_HEADER_LENGTH
        if value_off + value_size > end:
            raise ReportParseError(
                f"{where}: value runs past the measurement record",
                field="DMTFSpecMeasurementValue",
                offset=base + value_off,
            )
        if len(blocks) == count:
            raise ReportParseError(
                f"measurement record holds more than NumberOfBlocks={count} blocks",
                field="NumberOfBlocks",
                offset=base + off,
            )
        blocks.append(
            MeasurementBlock(
                index=index,
                specification=spec,
                value_type=value_type,
                value=bytes(resp[value_off : value_off + value_size]),
                offset=base + off,
            )
        )
        previous = index
        off = value_off + value_size
    if len(blocks) != count:
        raise ReportParseError(
            f"NumberOfBlocks says {count}, the record holds {len(blocks)}",
            field="NumberOfBlocks",
            offset=base + 4,
        )
    return tuple(blocks)


def parse_response(resp: bytes, request: MeasurementsRequest) -> MeasurementsResponse:
    """Parse the MEASUREMENTS response that answered ``request``; nothing may follow it."""
    base = REQUEST_LENGTH
    if len(resp) < RESPONSE_HEADER_LENGTH:
        raise ReportParseError("response shorter than its header", field="response", offset=base)
    if resp[0] != SPDM_VERSION_11:
        raise ReportParseError(
            f"response SPDMVersion 0x{resp[0]:02x}, expected 0x{SPDM_VERSION_11:02x}",
            field="response.SPDMVersion",
            offset=base,
        )
    if resp[1] != MEASUREMENTS:
        raise ReportParseError(
            f"response code 0x{resp[1]:02x}, expected MEASUREMENTS 0x{MEASUREMENTS:02x}",
            field="response.RequestResponseCode",
            offset=base + 1,
        )
    # Param1 carries the total block count only when Param2 of the request was 0; for a request
    # of all blocks it is reserved and must be zero.
    if resp[2] != 0:
        raise ReportParseError(
            f"response Param1 0x{resp[2]:02x} must be 0 for an all-blocks request",
            field="response.Param1",
            offset=base + 2,
        )
    # Param2 echoes the slot whose key signed (bits 0..3); bits 4..7 are reserved in SPDM 1.1.
    if resp[3] != request.slot_id:
        raise ReportParseError(
            f"response Param2 0x{resp[3]:02x}, expected the request's SlotID {request.slot_id}",
            field="response.Param2",
            offset=base + 3,
        )
    count = resp[4]
    if not 1 <= count <= MAX_BLOCKS:
        raise ReportParseError(
            f"NumberOfBlocks {count} outside 1..{MAX_BLOCKS}",
            field="NumberOfBlocks",
            offset=base + 4,
        )
    record_length = _u24(resp, 5)
    if record_length > MAX_RECORD_LENGTH:
        raise ReportParseError(
            f"MeasurementRecordLength {record_length} exceeds {MAX_RECORD_LENGTH}",
            field="MeasurementRecordLength",
            offset=base + 5,
        )
    record_end = RESPONSE_HEADER_LENGTH + record_length
    if record_end + NONCE_LENGTH + 2 > len(resp):
        raise ReportParseError(
            f"MeasurementRecordLength {record_length} runs past the response",
            field="MeasurementRecordLength",
            offset=base + 5,
        )
    blocks = _parse_blocks(resp, RESPONSE_HEADER_LENGTH, record_length, count, base)
    nonce = bytes(resp[record_end : record_end + NONCE_LENGTH])
    opaque_len_off = record_end + NONCE_LENGTH
    opaque_length = _u16(resp, opaque_len_off)
    if opaque_length > MAX_OPAQUE_LENGTH:
        raise ReportParseError(
            f"OpaqueLength {opaque_length} exceeds the SPDM 1.1 limit {MAX_OPAQUE_LENGTH}",
            field="OpaqueLength",
            offset=base + opaque_len_off,
        )
    opaque_start = opaque_len_off + 2
    sig_start = opaque_start + opaque_length
    expected_total = sig_start + SIGNATURE_LENGTH
    if len(resp) < expected_total:
        raise ReportParseError(
            f"response is {len(resp)} bytes; its lengths require {expected_total}"
            " (truncated opaque data or signature)",
            field="Signature",
            offset=base + min(sig_start, len(resp)),
        )
    if len(resp) > expected_total:
        raise ReportParseError(
            f"{len(resp) - expected_total} trailing bytes after the signature",
            field="trailing",
            offset=base + expected_total,
        )
    return MeasurementsResponse(
        raw=bytes(resp),
        version=resp[0],
        param1=resp[2],
        param2=resp[3],
        number_of_blocks=count,
        record_length=record_length,
        blocks=blocks,
        responder_nonce=nonce,
        opaque_data=bytes(resp[opaque_start:sig_start]),
        signature=bytes(resp[sig_start:]),
    )


def parse_report(data: bytes) -> SpdmReport:
    """Parse a whole report (request ‖ response). Raises only ``ReportParseError``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ReportParseError("a report must be bytes")
    data = bytes(data)
    if len(data) > MAX_REPORT_LENGTH:
        raise ReportParseError(
            f"report is {len(data)} bytes; the limit is {MAX_REPORT_LENGTH}", field="report"
        )
    if len(data) < MIN_REPORT_LENGTH:
        raise ReportParseError(
            f"report is {len(data)} bytes; the smallest possible is {MIN_REPORT_LENGTH}",
            field="report",
        )
    request = parse_request(data[:REQUEST_LENGTH])
    response = parse_response(data[REQUEST_LENGTH:], request)
    measurements = MappingProxyType({b.index: b.value for b in response.blocks})
    return SpdmReport(raw=data, request=request, response=response, measurements=measurements)
