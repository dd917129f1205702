"""configfs-tsm on SEV-SNP: the host's certificate table (``auxblob``) becomes certificates the
broker can load and verify; a malformed table is a ``ParseError``; an unknown provider is
refused clearly. TDX through the same fake tree: test_tsm_tdx.py.

The tables are built from the real AMD certificates in tests/assets/cpu/snp (virtee/sev's Milan
VCEK, ASK and ARK) and the real Milan report they sign, laid out as GHCB spec 4.1.8.1 says.
"""

from __future__ import annotations

import struct
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import agent.evidence.sources as sources
from agent.evidence.sources import (
    MAX_SNP_CERT_TABLE_ENTRIES,
    HardwareUnavailableError,
    TsmCpuSource,
    parse_snp_cert_table,
)
from attest.bundle import SnpEvidenceIn
from attest.errors import InputError, ParseError
from attest.snp.verify import (
    MAX_AMD_CERT_INPUT_BYTES,
    MAX_CRL_BYTES,
    load_amd_certificates,
    verify_snp_report,
)
from tests.conftest import TODAY
from tests.snp.helpers import VIRTEE, virtee_report

VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
#: Not one of the four: the GHCB CRL GUID as virtee/sev names it; hosts may add such entries.
OTHER = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
ENTRY = 24


def _vcek_der() -> bytes:
    return (VIRTEE / "vcek_milan.der").read_bytes()


def _ask_ark_der() -> tuple[bytes, bytes]:
    ask, ark = load_amd_certificates((VIRTEE / "cert_chain_milan").read_bytes())
    return ask.public_bytes(Encoding.DER), ark.public_bytes(Encoding.DER)


def table(items: list[tuple[uuid.UUID, bytes]], *, pad: int = 0) -> bytes:
    """A well-formed GHCB certificate table: entries, the zero entry, then the data in order."""
    offset = ENTRY * (len(items) + 1)
    head = b""
    for guid, data in items:
        head += guid.bytes + struct.pack("<II", offset, len(data))
        offset += len(data)
    return head + bytes(ENTRY) + b"".join(d for _, d in items) + bytes(pad)


def real_table(*, pad: int = 0) -> bytes:
    ask, ark = _ask_ark_der()
    return table([(VCEK, _vcek_der()), (ASK, ask), (ARK, ark)], pad=pad)


def entry(guid: uuid.UUID | bytes, offset: int, length: int) -> bytes:
    raw = guid.bytes if isinstance(guid, uuid.UUID) else guid
    return raw + struct.pack("<II", offset, length)


def _verify(ev: SnpEvidenceIn) -> Any:
    """What the broker does with SNP evidence (attest/appraise/composite.py): every item through
    ``load_amd_certificates``, then ``verify_snp_report``."""
    certs = tuple(c for blob in ev.certificates for c in load_amd_certificates(blob))
    return verify_snp_report(ev.report, certs, at=TODAY)


# --- the table ---------------------------------------------------------------------------------


def test_real_table_parses_to_the_three_certificates() -> None:
    ask, ark = _ask_ark_der()
    assert parse_snp_cert_table(real_table(pad=4096)) == {
        "VCEK": _vcek_der(),
        "ASK": ask,
        "ARK": ark,
    }


def test_parsed_certificates_verify_the_real_report() -> None:
    ev = SnpEvidenceIn(
        report=virtee_report(), certificates=tuple(parse_snp_cert_table(real_table()).values())
    )
    v = _verify(ev)
    assert v.chain.certs[0].public_bytes(Encoding.DER) == _vcek_der()
    ask, ark = _ask_ark_der()
    assert v.chain.certs[1].public_bytes(Encoding.DER) == ask
    assert v.chain.root.public_bytes(Encoding.DER) == ark


def test_whole_table_as_one_certificate_is_what_the_broker_refused() -> None:
    """The defect: the blob itself is neither DER nor PEM, so passing it through never worked."""
    with pytest.raises(InputError, match="malformed AMD certificate"):
        load_amd_certificates(real_table())


def test_empty_blob_is_no_certificates() -> None:
    assert parse_snp_cert_table(b"") == {}


def test_terminator_only_is_no_certificates() -> None:
    assert parse_snp_cert_table(bytes(ENTRY)) == {}


def test_unknown_guid_dropped_but_bounds_checked() -> None:
    vcek = _vcek_der()
    assert parse_snp_cert_table(table([(OTHER, b"crl bytes"), (VCEK, vcek)])) == {"VCEK": vcek}
    # the same unknown entry pointing past the end is still a malformed table
    bad = entry(OTHER, 2 * ENTRY, 10_000) + bytes(ENTRY) + b"x"
    with pytest.raises(ParseError, match="not between"):
        parse_snp_cert_table(bad)


def test_vlek_kept() -> None:
    assert parse_snp_cert_table(table([(VLEK, b"vlek")])) == {"VLEK": b"vlek"}


def test_guid_byte_order_is_rfc4122() -> None:
    """The wire order is the RFC 4122 (big-endian) one go-sev-guest compares; a table written
    with the mixed-endian Microsoft layout names no known certificate."""
    vcek = _vcek_der()
    mixed = entry(VCEK.bytes_le, 2 * ENTRY, len(vcek)) + bytes(ENTRY) + vcek
    assert parse_snp_cert_table(mixed) == {}
    assert parse_snp_cert_table(table([(VCEK, vcek)])) == {"VCEK": vcek}


def _malformed() -> Iterator[tuple[str, bytes, str]]:
    vcek = _vcek_der()
    data_at = 2 * ENTRY
    yield "offset inside the table", entry(VCEK, ENTRY, 4) + bytes(ENTRY) + vcek, "not between"
    yield "offset past the end", entry(VCEK, 10_000, 4) + bytes(ENTRY) + vcek, "not between"
    yield (
        "length past the end",
        entry(VCEK, data_at, len(vcek) + 1) + bytes(ENTRY) + vcek,
        "not between",
    )
    yield (
        "u32 wrap does not help",
        entry(VCEK, 0xFFFF_FFFF, 2) + bytes(ENTRY) + vcek,
        "not between",
    )
    yield "missing terminator", entry(VCEK, ENTRY, len(vcek)) + vcek[: ENTRY - 1], "terminator"
    yield "no terminator at all", entry(VCEK, ENTRY, 0), "terminator"
    yield "truncated first entry", b"\x01" * (ENTRY - 1), "terminator"
    yield (
        "zero GUID with a range",
        entry(bytes(16), data_at, 4) + bytes(ENTRY) + vcek,
        "zero GUID",
    )
    many = MAX_SNP_CERT_TABLE_ENTRIES + 1
    start = ENTRY * (many + 1)
    yield (
        "too many entries",
        b"".join(entry(OTHER, start + i, 1) for i in range(many)) + bytes(ENTRY) + bytes(many),
        "more than",
    )
    three = 3 * ENTRY
    yield (
        "overlapping",
        entry(VCEK, three, 100) + entry(ASK, three + 99, 100) + bytes(ENTRY) + bytes(300),
        "overlap",
    )
    yield (
        "overlap through an unknown entry",
        entry(VCEK, three, 100) + entry(OTHER, three + 50, 10) + bytes(ENTRY) + bytes(300),
        "overlap",
    )
    yield (
        "two VCEKs",
        entry(VCEK, three, 10) + entry(VCEK, three + 10, 10) + bytes(ENTRY) + bytes(20),
        "two VCEK",
    )
    yield "empty VCEK", entry(VCEK, data_at, 0) + bytes(ENTRY), "1.."
    big = MAX_AMD_CERT_INPUT_BYTES + 1
    yield "oversized VCEK", entry(VCEK, data_at, big) + bytes(ENTRY) + bytes(big), "1.."


@pytest.mark.parametrize(
    ("blob", "match"), [(b, m) for _, b, m in _malformed()], ids=[n for n, _, _ in _malformed()]
)
def test_malformed_table_refused(blob: bytes, match: str) -> None:
    with pytest.raises(ParseError, match=match) as info:
        parse_snp_cert_table(blob)
    assert info.value.field == "auxblob"


def test_every_truncation_refused() -> None:
    blob = real_table()
    for n in range(1, len(blob)):
        with pytest.raises(ParseError):
            parse_snp_cert_table(blob[:n])


def test_header_byte_flips_only_typed_errors() -> None:
    """Any one changed byte of the entries either still parses (it hit a GUID, which is then
    unknown, or a length that still fits) or is a ParseError: never another exception."""
    blob = real_table()
    for i in range(4 * ENTRY):
        for mask in (0x01, 0x80):
            bad = blob[:i] + bytes([blob[i] ^ mask]) + blob[i + 1 :]
            try:
                parse_snp_cert_table(bad)
            except ParseError:
                pass


# --- the configfs-tsm source ----------------------------------------------------------------------


class FakeTsm:
    """A configfs-tsm report directory in tmp_path: ``mkdir`` of an entry under it populates the
    attributes the kernel would show (``provider``, ``outblob``, ``auxblob``) and the source's
    ``rmdir`` removes them, as configfs does. ``inblob`` is what the source wrote."""

    def __init__(
        self,
        root: Path,
        monkeypatch: pytest.MonkeyPatch,
        *,
        provider: str,
        outblob: bytes,
        auxblob: bytes | None,
        attributes: dict[str, bytes] | None = None,
    ) -> None:
        self.root = root
        self.entries: list[Path] = []
        self.inblob: bytes | None = None
        self.privlevel: bytes | None = None
        real_mkdir: Callable[..., None] = Path.mkdir

        def mkdir(path: Path, *args: Any, **kwargs: Any) -> None:
            real_mkdir(path, *args, **kwargs)
            if path.parent == root:
                self.entries.append(path)
                (path / "provider").write_text(provider + "\n")
                (path / "outblob").write_bytes(outblob)
                if auxblob is not None:
                    (path / "auxblob").write_bytes(auxblob)
                for name, value in (attributes or {}).items():
                    (path / name).write_bytes(value)

        def rmdir(path: Path) -> None:
            for child in Path(path).iterdir():
                if child.name == "inblob":
                    self.inblob = child.read_bytes()
                if child.name == "privlevel":
                    self.privlevel = child.read_bytes()
                child.unlink()
            Path(path).rmdir()

        monkeypatch.setattr(Path, "mkdir", mkdir)
        monkeypatch.setattr(sources, "os", types.SimpleNamespace(rmdir=rmdir))


def _fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> tuple[FakeTsm, Path]:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    return FakeTsm(root, monkeypatch, **kw), root


REPORT_DATA = bytes(range(64))


def test_source_passes_the_parsed_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, root = _fake(
        tmp_path,
        monkeypatch,
        provider="sev_guest",
        outblob=virtee_report(),
        auxblob=real_table(pad=512),
    )
    ev = TsmCpuSource(root).collect(REPORT_DATA)
    assert isinstance(ev, SnpEvidenceIn)
    ask, ark = _ask_ark_der()
    assert ev.report == virtee_report()
    assert ev.certificates == (_vcek_der(), ask, ark)
    assert fake.inblob == REPORT_DATA
    assert list(root.iterdir()) == []  # the entry was removed
    v = _verify(ev)
    assert v.chain.root.public_bytes(Encoding.DER) == ark


def test_source_attaches_the_amd_crl_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, root = _fake(
        tmp_path, monkeypatch, provider="sev_guest", outblob=virtee_report(), auxblob=real_table()
    )
    crl = b"\x30\x82" + b"c" * 100
    ev = TsmCpuSource(root, crl=crl).collect(REPORT_DATA)
    assert isinstance(ev, SnpEvidenceIn)
    assert ev.crl == crl
    plain = TsmCpuSource(root).collect(REPORT_DATA)
    assert isinstance(plain, SnpEvidenceIn) and plain.crl is None  # none given: none sent
    for bad in (b"", b"c" * (MAX_CRL_BYTES + 1)):
        with pytest.raises(InputError, match="AMD CRL"):
            TsmCpuSource(root, crl=bad)


@pytest.mark.parametrize("auxblob", [None, b""])
def test_source_without_host_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auxblob: bytes | None
) -> None:
    _, root = _fake(
        tmp_path, monkeypatch, provider="sev_guest", outblob=virtee_report(), auxblob=auxblob
    )
    ev = TsmCpuSource(root).collect(REPORT_DATA)
    assert isinstance(ev, SnpEvidenceIn)
    assert ev.certificates == ()


def test_source_malformed_auxblob_is_parse_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, root = _fake(
        tmp_path,
        monkeypatch,
        provider="sev_guest",
        outblob=virtee_report(),
        auxblob=real_table()[: ENTRY * 4 - 1],
    )
    with pytest.raises(ParseError, match="terminator"):
        TsmCpuSource(root).collect(REPORT_DATA)
    assert list(root.iterdir()) == []


def test_source_refuses_unknown_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, root = _fake(tmp_path, monkeypatch, provider="arm_cca_guest", outblob=b"x", auxblob=None)
    with pytest.raises(HardwareUnavailableError, match="arm_cca_guest"):
        TsmCpuSource(root).collect(REPORT_DATA)


def _snp_guest(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    outblob: bytes | None = None,
    attributes: dict[str, bytes] | None = None,
) -> tuple[FakeTsm, Path]:
    """A ``sev_guest`` entry with the real report (or ``outblob``) and no certificate table."""
    return _fake(
        tmp_path,
        monkeypatch,
        provider="sev_guest",
        outblob=virtee_report() if outblob is None else outblob,
        auxblob=None,
        attributes=attributes,
    )


@pytest.mark.parametrize(("floor", "written"), [(None, None), (b"0\n", None), (b"2\n", b"2")])
def test_the_report_is_requested_at_the_guests_own_vmpl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, floor: bytes | None, written: bytes | None
) -> None:
    """Under an SVSM the guest runs at VMPL ``privlevel_floor``; a new entry asks for VMPL 0,
    which the firmware refuses, so every request failed ("try again"). The floor is written to
    ``privlevel`` before ``inblob``; none (no SVSM, older kernel) or 0 writes nothing."""
    fake, root = _snp_guest(
        tmp_path, monkeypatch, attributes={} if floor is None else {"privlevel_floor": floor}
    )
    assert isinstance(TsmCpuSource(root).collect(REPORT_DATA), SnpEvidenceIn)
    assert fake.privlevel == written and fake.inblob == REPORT_DATA


@pytest.mark.parametrize("floor", [b"4\n", b"x\n", b"-1\n"])
def test_a_privlevel_floor_that_is_not_a_vmpl_is_a_hardware_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, floor: bytes
) -> None:
    _, root = _snp_guest(tmp_path, monkeypatch, attributes={"privlevel_floor": floor})
    with pytest.raises(HardwareUnavailableError, match="privlevel_floor"):
        TsmCpuSource(root).collect(REPORT_DATA)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("size", [0, 10, 1183, 1185])
def test_a_report_that_is_not_1184_bytes_is_refused_at_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Only the 256 KiB ceiling was checked: an empty or short outblob went to the broker,
    which spent the nonce on it (a TDX quote was already refused when empty)."""
    _, root = _snp_guest(tmp_path, monkeypatch, outblob=(virtee_report() + bytes(1))[:size])
    with pytest.raises(HardwareUnavailableError, match=f"{size}-byte SEV-SNP report"):
        TsmCpuSource(root).collect(REPORT_DATA)
