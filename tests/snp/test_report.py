"""The SEV-SNP report parser: real reports, every reserved range, versions 2/3/5, hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.errors import InputError, ParseError
from attest.snp.report import (
    REPORT_SIZE,
    SIGNED_SIZE,
    GuestPolicy,
    PlatformInfo,
    Product,
    SigningKey,
    TcbVersion,
    parse_report,
    product_from_cpuid,
)
from tests.snp.helpers import flip, gsg_report, patch, set_u32, set_u64, virtee_report


def _v3(data: bytes, family: int = 0x19, model: int = 0x01, stepping: int = 1) -> bytes:
    """Turn a v2 report into a v3 one (unsigned edit: for parser tests only)."""
    return patch(set_u32(data, 0, 3), 0x188, bytes([family, model, stepping]))


def _v5(data: bytes, launch: int = 0x5, current: int = 0x7) -> bytes:
    out = set_u32(_v3(data), 0, 5)
    return set_u64(set_u64(out, 0x1F8, launch), 0x200, current)


# --- real reports ---------------------------------------------------------------------------


def test_go_sev_guest_report_fields() -> None:
    r = parse_report(gsg_report())
    assert r.raw == gsg_report()
    assert r.signed_bytes == gsg_report()[:SIGNED_SIZE]
    assert r.version == 2
    assert r.policy.raw == 0xB0000
    assert r.policy.debug is True
    assert r.policy.smt is True
    assert r.policy.migrate_ma is False
    assert r.vmpl == 0
    assert r.signature_algo == 1
    assert r.signing_key is SigningKey.VCEK
    assert r.platform_info.smt_enabled and not r.platform_info.tsme_enabled
    assert r.report_data[:5] == bytes([1, 2, 3, 4, 5]) and not any(r.report_data[5:])
    assert r.measurement.hex().startswith("b07af9620f3b839b")
    assert str(r.current_version) == "1.49.3"
    assert r.cpuid is None and r.cpuid_product is None
    assert r.launch_mit_vector is None
    tcb = r.tcb("reported", Product.MILAN)
    assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc) == (2, 0, 5, 68, None)
    assert r.signature_r.bit_length() > 300 and r.signature_s.bit_length() > 300


def test_virtee_report_fields() -> None:
    r = parse_report(virtee_report())
    assert r.policy.raw == 0x30000
    assert r.policy.debug is False
    assert str(r.committed_version) == "1.52.4"
    tcb = r.tcb("reported", Product.MILAN)
    assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode) == (3, 0, 8, 115)
    assert r.report_id_ma == b"\xff" * 32


def test_as_dict_is_json_ready() -> None:
    import json

    d = parse_report(virtee_report()).as_dict(Product.MILAN)
    text = json.dumps(d)
    assert '"debug": false' in text
    assert d["tcb"]["reported"]["microcode"] == 115  # type: ignore[index]


# --- sizes and versions ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, REPORT_SIZE - 1, REPORT_SIZE + 1, 2 * REPORT_SIZE])
def test_wrong_size_refused(size: int) -> None:
    data = (gsg_report() * 2)[:size]
    with pytest.raises(ParseError, match="exactly 1184 bytes"):
        parse_report(data)


@pytest.mark.parametrize("version", [0, 1, 4, 6, 0xFFFFFFFF])
def test_unsupported_versions_refused(version: int) -> None:
    with pytest.raises(ParseError) as e:
        parse_report(set_u32(gsg_report(), 0, version))
    assert e.value.field == "VERSION" and e.value.offset == 0


def test_v3_cpuid_names_product_and_checks_tcb_layout() -> None:
    r = parse_report(_v3(gsg_report()))
    assert r.version == 3
    assert r.cpuid is not None and (r.cpuid.family, r.cpuid.model) == (0x19, 0x01)
    assert r.cpuid_product is Product.MILAN
    # The Milan layout has reserved bytes 2..5: the parser checks them once the product is known.
    with pytest.raises(ParseError) as e:
        parse_report(flip(_v3(gsg_report()), 0x38 + 3))
    assert e.value.field == "CURRENT_TCB reserved [0x3a..0x3d]"
    assert e.value.offset == 0x3B


def test_v3_turin_layout() -> None:
    data = _v3(gsg_report(), family=0x1A, model=0x02)
    # Turin: FMC, BL, TEE, SNP, rsvd x3, UCODE. The go-sev-guest bytes 02 00 00 00 00 00 05 44
    # have byte 6 set, a reserved byte under the Turin layout.
    with pytest.raises(ParseError) as e:
        parse_report(data)
    assert e.value.offset == 0x38 + 6
    tcb = bytes([1, 2, 3, 4, 0, 0, 0, 9])
    for off in (0x38, 0x180, 0x1E0, 0x1F0):
        data = patch(data, off, tcb)
    r = parse_report(data)
    assert r.cpuid_product is Product.TURIN
    t = r.tcb("reported", Product.TURIN)
    assert (t.fmc, t.bootloader, t.tee, t.snp, t.microcode) == (1, 2, 3, 4, 9)


def test_v5_mitigation_vectors() -> None:
    r = parse_report(_v5(gsg_report(), launch=0x11, current=0x13))
    assert (r.version, r.launch_mit_vector, r.current_mit_vector) == (5, 0x11, 0x13)
    assert r.as_dict()["current_mit_vector"] == "0x13"


def test_v2_and_v3_have_no_mitigation_vectors() -> None:
    for data in (gsg_report(), _v3(gsg_report())):
        with pytest.raises(ParseError) as e:
            parse_report(set_u64(data, 0x1F8, 1))
        assert e.value.field == "reserved [0x1f8..0x29f]"
        assert e.value.offset == 0x1F8


# --- reserved ranges: exact errors ----------------------------------------------------------


def test_reserved_flip_exact_error() -> None:
    with pytest.raises(ParseError) as e:
        parse_report(flip(gsg_report(), 0x190))
    assert str(e.value) == (
        "reserved byte is 0x01, must be zero (reserved [0x188..0x19f], offset 400)"
    )


@pytest.mark.parametrize(
    ("data_fn", "offset", "field"),
    [
        (gsg_report, 0x4C, "reserved [0x4c..0x4f]"),
        (gsg_report, 0x4F, "reserved [0x4c..0x4f]"),
        (gsg_report, 0x188, "reserved [0x188..0x19f]"),
        (gsg_report, 0x19F, "reserved [0x188..0x19f]"),
        (lambda: _v3(gsg_report()), 0x18B, "reserved [0x18b..0x19f]"),
        (gsg_report, 0x1EB, "reserved [0x1eb..0x1eb]"),
        (gsg_report, 0x1EF, "reserved [0x1ef..0x1ef]"),
        (gsg_report, 0x29F, "reserved [0x1f8..0x29f]"),
        (lambda: _v5(gsg_report()), 0x208, "reserved [0x208..0x29f]"),
        (gsg_report, 0x2A0 + 48, "SIGNATURE.R padding [0x2d0..0x2e7]"),
        (gsg_report, 0x2A0 + 72 + 48, "SIGNATURE.S padding [0x318..0x32f]"),
        (gsg_report, 0x2A0 + 144, "SIGNATURE reserved [0x330..0x49f]"),
        (gsg_report, REPORT_SIZE - 1, "SIGNATURE reserved [0x330..0x49f]"),
    ],
)
def test_every_reserved_range(data_fn, offset: int, field: str) -> None:  # type: ignore[no-untyped-def]
    data = data_fn()
    parse_report(data)  # the unflipped input is fine
    with pytest.raises(ParseError) as e:
        parse_report(flip(data, offset, 0x80))
    assert e.value.field == field
    assert e.value.offset == offset
    assert "0x80" in str(e.value)


# --- typed fields ---------------------------------------------------------------------------


def test_policy_bit17_must_be_one() -> None:
    with pytest.raises(ParseError) as e:
        parse_report(set_u64(gsg_report(), 0x08, 0x90000))
    assert e.value.field == "POLICY" and "bit 17" in str(e.value)


@pytest.mark.parametrize("bit", [26, 31, 40, 63])
def test_policy_reserved_bits_refused(bit: int) -> None:
    with pytest.raises(ParseError, match="63:26"):
        parse_report(set_u64(gsg_report(), 0x08, 0x30000 | (1 << bit)))


def test_policy_all_flags() -> None:
    p = GuestPolicy.from_int(0x3FF_1F02)
    assert (p.abi_major, p.abi_minor) == (0x1F, 0x02)
    assert all(
        [
            p.smt,
            p.migrate_ma,
            p.debug,
            p.single_socket,
            p.cxl_allow,
            p.mem_aes_256_xts,
            p.rapl_dis,
            p.ciphertext_hiding,
            p.page_swap_disable,
        ]
    )
    q = GuestPolicy.from_int(0x20000)
    assert not any([q.smt, q.debug, q.migrate_ma, q.page_swap_disable])


def test_platform_info_bits_and_unknown_bits_kept() -> None:
    p = PlatformInfo.from_int(0b1011_1111 | (1 << 40) | (1 << 6))
    assert p.smt_enabled and p.tsme_enabled and p.ecc_enabled and p.rapl_disabled
    assert p.ciphertext_hiding_enabled and p.alias_check_complete and p.tio_enabled
    assert p.unknown_bits == (1 << 40) | (1 << 6)
    r = parse_report(set_u64(gsg_report(), 0x40, 1 << 9))
    assert r.platform_info.unknown_bits == 1 << 9


@pytest.mark.parametrize(("code", "key"), [(0, SigningKey.VCEK), (1, SigningKey.VLEK)])
def test_signing_key_selection(code: int, key: SigningKey) -> None:
    assert parse_report(set_u32(gsg_report(), 0x48, code << 2)).signing_key is key


@pytest.mark.parametrize("code", [2, 3, 4, 5, 6])
def test_reserved_signing_keys_refused(code: int) -> None:
    with pytest.raises(ParseError, match=f"SIGNING_KEY value {code} is reserved"):
        parse_report(set_u32(gsg_report(), 0x48, code << 2))


def test_key_info_reserved_bits_refused() -> None:
    with pytest.raises(ParseError) as e:
        parse_report(set_u32(gsg_report(), 0x48, 1 << 5))
    assert e.value.field == "KEY_INFO" and e.value.offset == 0x48


def test_unsigned_report_must_have_zero_signature() -> None:
    data = set_u32(gsg_report(), 0x48, 7 << 2)
    with pytest.raises(ParseError) as e:
        parse_report(data)
    assert e.value.field is not None and e.value.field.startswith("SIGNATURE (unsigned report)")
    blank = patch(data, SIGNED_SIZE, bytes(REPORT_SIZE - SIGNED_SIZE))
    r = parse_report(blank)
    assert r.signing_key is SigningKey.NONE and (r.signature_r, r.signature_s) == (0, 0)


def test_masked_chip_id_must_be_zero() -> None:
    data = set_u32(gsg_report(), 0x48, 0b10)
    with pytest.raises(ParseError) as e:
        parse_report(data)
    assert e.value.field == "CHIP_ID"
    r = parse_report(patch(data, 0x1A0, bytes(64)))
    assert r.key_info.mask_chip_id and r.chip_id == bytes(64)


@pytest.mark.parametrize("algo", [0, 2, 0xFFFF])
def test_signature_algorithm_must_be_ecdsa_p384(algo: int) -> None:
    with pytest.raises(ParseError) as e:
        parse_report(set_u32(gsg_report(), 0x34, algo))
    assert e.value.field == "SIGNATURE_ALGO" and e.value.offset == 0x34


@pytest.mark.parametrize("vmpl", [4, 0xFFFFFFFF])
def test_vmpl_range(vmpl: int) -> None:
    with pytest.raises(ParseError) as e:
        parse_report(set_u32(gsg_report(), 0x30, vmpl))
    assert e.value.field == "VMPL"
    assert parse_report(set_u32(gsg_report(), 0x30, 3)).vmpl == 3


def test_tcb_layouts() -> None:
    raw = bytes([1, 2, 0, 0, 0, 0, 7, 9])
    m = TcbVersion.decode(raw, Product.GENOA)
    assert (m.bootloader, m.tee, m.snp, m.microcode, m.fmc) == (1, 2, 7, 9, None)
    t = TcbVersion.decode(bytes([5, 1, 2, 3, 0, 0, 0, 9]), Product.TURIN)
    assert (t.fmc, t.bootloader, t.tee, t.snp, t.microcode) == (5, 1, 2, 3, 9)
    with pytest.raises(ParseError):
        TcbVersion.decode(raw, Product.TURIN)  # byte 6 is reserved on Turin
    with pytest.raises(ParseError):
        TcbVersion.decode(raw[:7], Product.MILAN)


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, Product.MILAN),
        (0x19, 0x11, Product.GENOA),
        (0x19, 0xA0, Product.GENOA),
        (0x1A, 0x02, Product.TURIN),
        (0x1A, 0x11, Product.TURIN),
        (0x19, 0x21, None),
        (0x17, 0x31, None),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: Product | None) -> None:
    assert product_from_cpuid(family, model) is product


def test_frozen() -> None:
    r = parse_report(gsg_report())
    with pytest.raises(AttributeError):
        r.vmpl = 1  # type: ignore[misc]


# --- hypothesis: only typed errors ----------------------------------------------------------

_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(st.binary(min_size=0, max_size=2 * REPORT_SIZE))
def test_random_bytes_only_typed_errors(data: bytes) -> None:
    try:
        parse_report(data)
    except InputError:
        pass


@_SETTINGS
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE))
def test_random_reports_only_typed_errors(data: bytes) -> None:
    try:
        r = parse_report(data)
    except ParseError as exc:
        assert exc.offset is None or 0 <= exc.offset < REPORT_SIZE
    else:
        assert r.raw == data


@_SETTINGS
@given(st.sampled_from([gsg_report(), virtee_report()]), st.integers(0, REPORT_SIZE - 1))
def test_truncation_refused(data: bytes, cut: int) -> None:
    with pytest.raises(ParseError):
        parse_report(data[:cut])


@_SETTINGS
@given(
    st.sampled_from([gsg_report(), virtee_report()]),
    st.integers(0, REPORT_SIZE - 1),
    st.integers(1, 255),
)
def test_single_byte_changes_only_typed_errors(data: bytes, offset: int, mask: int) -> None:
    mutated = flip(data, offset, mask)
    try:
        r = parse_report(mutated)
    except ParseError as exc:
        assert exc.offset is None or 0 <= exc.offset < REPORT_SIZE
    else:
        assert r.raw == mutated and r.raw != data
