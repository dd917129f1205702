"""RIM parse and verify on NVIDIA's real RIMs (tests/assets/nvidia/rims, see PROVENANCE.md §3)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from attest import roots
from attest.errors import ChainError, ParseError, VerificationError
from attest.nvidia.rim import (
    MAX_RIM_BYTES,
    Rim,
    RimChainError,
    RimMeasurement,
    RimParseError,
    RimVerificationError,
    RimVerifier,
    parse_rim,
    verify_rim,
)
from attest.x509chain import ChainCache
from tests.conftest import NVIDIA, RIM_ERA, TODAY

RIMS = NVIDIA / "rims"
ALL_RIMS = sorted(RIMS.rglob("*.swidtag"))
DRIVER = RIMS / "test_no_gpu" / "Driver_RIM_test_no_gpu.swidtag"
VBIOS = RIMS / "test_no_gpu" / "1010_0200_882_96005E0001_test_no_gpu.swidtag"
VBIOS_PROD = RIMS / "prod_vbios" / "1010_0200_882_96005E0001_PROD.swidtag"


def driver_bytes() -> bytes:
    return DRIVER.read_bytes()


def flip_hash_digit(data: bytes, index: int) -> bytes:
    """Change one hex digit of Hash0 of the Resource with ``index``."""
    m = re.search(rb'index="%d" [^>]*?Hash0="([0-9a-f])' % index, data)
    assert m is not None
    pos = m.start(1)
    new = b"1" if data[pos : pos + 1] != b"1" else b"2"
    return data[:pos] + new + data[pos + 1 :]


def test_all_26_rims_present() -> None:
    assert len(ALL_RIMS) == 26


@pytest.mark.parametrize("path", ALL_RIMS, ids=lambda p: p.name)
def test_every_rim_parses_strictly(path: Path) -> None:
    rim = parse_rim(path.read_bytes())
    assert rim.raw == path.read_bytes()
    assert rim.product == "GH100" and rim.name == "GH100"
    assert rim.manufacturer == "NVIDIA Corporation" and rim.manufacturer_id == "5703"
    assert len(rim.measurements) == 64
    assert [m.index for m in rim.measurements] == list(range(64))
    assert all(m.size == 48 and all(len(v) == 48 for v in m.alternatives) for m in rim.measurements)
    assert len(rim.embedded_certificates) == 4
    assert len(rim.signer_chain) == 3
    assert rim.embedded_certificates[-1].public_bytes(
        Encoding.DER
    ) == roots.nvidia_rim_root().public_bytes(Encoding.DER)
    if path == DRIVER:
        assert rim.kind == "driver" and rim.version == "545.00"
        assert [m.index for m in rim.active_measurements] == [7, *range(21, 41)]
    else:
        assert rim.kind == "vbios"
        assert [m.index for m in rim.active_measurements] == [*range(7), *range(8, 13)]


@pytest.mark.parametrize("path", ALL_RIMS, ids=lambda p: p.name)
def test_every_rim_verifies_in_its_era_and_is_expired_today(path: Path) -> None:
    rim = parse_rim(path.read_bytes())
    verified = verify_rim(rim, at=RIM_ERA)
    assert verified.rim is rim
    assert verified.signer.subject.rfc4514_string().startswith("CN=HCC RIM L4 Signer")
    assert verified.valid_from <= RIM_ERA <= verified.valid_until
    assert verified.valid_until.year == 2025
    with pytest.raises(RimChainError) as err:
        verify_rim(rim, at=TODAY)
    assert err.value.reason == "rim_chain_expired"
    assert err.value.chain_reason == "expired"
    assert isinstance(err.value, ChainError)


def test_driver_tag_id_is_sha384_of_product_and_version() -> None:
    """Why a RIM's tagId is not NVIDIA's RIM id (documented in rim_select)."""
    rim = parse_rim(driver_bytes())
    assert rim.tag_id == hashlib.sha384(b"GH100_545.00").hexdigest()


def test_test_and_prod_vbios_rims_differ_only_where_provenance_says() -> None:
    test, prod = parse_rim(VBIOS.read_bytes()), parse_rim(VBIOS_PROD.read_bytes())
    assert test.tag_id == prod.tag_id
    differ = [a.index for a, b in zip(test.measurements, prod.measurements, strict=True) if a != b]
    assert differ == [1, 2, 3, 9]


def test_version_matches_is_case_insensitive() -> None:
    rim = parse_rim(VBIOS.read_bytes())
    assert rim.version_matches("96.00.5e.00.01")
    assert not rim.version_matches("96.00.5e.00.02")
    assert rim.measurement(12) is not None and rim.measurement(64) is None


# ---------------------------------------------------------------------------------------------
# tampering the signed content


def test_one_hash_digit_changed_fails_the_signature() -> None:
    data = flip_hash_digit(driver_bytes(), 7)
    rim = parse_rim(data)  # still well formed
    assert rim.measurement(7) != parse_rim(driver_bytes()).measurement(7)
    with pytest.raises(RimVerificationError) as err:
        verify_rim(rim, at=RIM_ERA)
    assert err.value.reason == "rim_signature"


def test_inactive_hash_changed_fails_the_signature_too() -> None:
    with pytest.raises(RimVerificationError) as err:
        verify_rim(parse_rim(flip_hash_digit(driver_bytes(), 0)), at=RIM_ERA)
    assert err.value.reason == "rim_signature"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'index="7" active="True"', b'index="7" active="False"'),
        (b'index="0" active="False"', b'index="0" active="True"'),
        (b'colloquialVersion="545.00"', b'colloquialVersion="545.01"'),
        (b'name="Measurement_7"', b'name="Measurement_8"'),
    ],
)
def test_flag_version_or_name_changed_fails_the_signature(old: bytes, new: bytes) -> None:
    data = driver_bytes()
    assert data.count(old) == 1
    with pytest.raises(RimVerificationError) as err:
        verify_rim(parse_rim(data.replace(old, new)), at=RIM_ERA)
    assert err.value.reason == "rim_signature"


def test_signature_value_changed_fails() -> None:
    data = driver_bytes()
    m = re.search(rb"<ds:SignatureValue>(.)", data)
    assert m is not None
    pos = m.start(1)
    swapped = b"A" if data[pos : pos + 1] != b"A" else b"B"
    with pytest.raises(RimVerificationError) as err:
        verify_rim(parse_rim(data[:pos] + swapped + data[pos + 1 :]), at=RIM_ERA)
    assert err.value.reason == "rim_signature"


def test_signer_swapped_for_another_rims_signer_fails() -> None:
    """Chain fine, but the signature was made by a different L4 key."""
    driver, vbios = parse_rim(driver_bytes()), parse_rim(VBIOS.read_bytes())
    forged = dataclasses.replace(driver, signer_chain=vbios.signer_chain)
    with pytest.raises(RimVerificationError) as err:
        verify_rim(forged, at=RIM_ERA)
    assert err.value.reason == "rim_signature"


def test_wrong_root_is_a_chain_error() -> None:
    with pytest.raises(RimChainError) as err:
        verify_rim(parse_rim(driver_bytes()), at=RIM_ERA, root=roots.nvidia_device_root())
    assert err.value.reason.startswith("rim_chain_")


def test_not_yet_valid() -> None:
    from datetime import UTC, datetime

    with pytest.raises(RimChainError) as err:
        verify_rim(parse_rim(driver_bytes()), at=datetime(2023, 1, 1, tzinfo=UTC))
    assert err.value.reason == "rim_chain_not_yet_valid"


# ---------------------------------------------------------------------------------------------
# signature wrapping


def test_second_unsigned_payload_is_refused_by_the_parser() -> None:
    data = driver_bytes()
    evil = (
        b'<ns0:Payload><ns0:Resource type="Measurement" index="7" active="True" alternatives="1" '
        b'ns2:Hash0="' + b"ab" * 48 + b'" name="Measurement_7" size="48"/></ns0:Payload>\n'
    )
    wrapped = data.replace(b"<ds:Signature", evil + b"<ds:Signature", 1)
    with pytest.raises(RimParseError, match="after Payload"):
        parse_rim(wrapped)


def test_signed_content_moved_under_a_new_root_is_refused() -> None:
    data = driver_bytes()
    start = data.index(b"<ns0:Entity")
    head = data[:start]
    fake_payload = (
        b'<ns0:Payload><ns0:Resource type="Measurement" index="7" active="True" alternatives="1" '
        b'ns2:Hash0="' + b"cd" * 48 + b'" name="Measurement_7" size="48"/></ns0:Payload>'
    )
    wrapped = head + fake_payload + b"<ns0:Wrapper>" + data + b"</ns0:Wrapper></SoftwareIdentity>"
    with pytest.raises(RimParseError):
        parse_rim(wrapped)
    # and the verifier, given those bytes behind the parser's back, refuses them too
    forged = dataclasses.replace(parse_rim(data), raw=wrapped)
    with pytest.raises(RimVerificationError):
        verify_rim(forged, at=RIM_ERA)


def test_signature_moved_inside_the_payload_is_refused() -> None:
    data = driver_bytes()
    sig_start, sig_end = data.index(b"<ds:Signature"), data.index(b"</ds:Signature>") + 15
    sig = data[sig_start:sig_end]
    moved = data[:sig_start] + data[sig_end:]
    moved = moved.replace(b"</ns0:Payload>", sig + b"</ns0:Payload>", 1)
    with pytest.raises(RimParseError):
        parse_rim(moved)


def test_fields_not_backed_by_the_signature_are_refused() -> None:
    """A Rim whose fields were edited after parsing: the signature covers raw, not the fields."""
    rim = parse_rim(driver_bytes())
    m7 = rim.measurement(7)
    assert m7 is not None
    fake = dataclasses.replace(m7, alternatives=(b"\x00" * 48,))
    edited = tuple(fake if m.index == 7 else m for m in rim.measurements)
    for forged in (
        dataclasses.replace(rim, measurements=edited),
        dataclasses.replace(rim, body=dataclasses.replace(rim.body, measurements=edited)),
        dataclasses.replace(rim, version="550.90.07"),
        dataclasses.replace(
            rim, raw=VBIOS.read_bytes(), signer_chain=parse_rim(VBIOS.read_bytes()).signer_chain
        ),
    ):
        with pytest.raises(RimVerificationError) as err:
            verify_rim(forged, at=RIM_ERA)
        assert err.value.reason == "rim_signature_wrapping"


# ---------------------------------------------------------------------------------------------
# strict parsing: every refusal is a typed ParseError


def _mutate(old: bytes, new: bytes, count: int = 1):  # type: ignore[no-untyped-def]
    def f(data: bytes) -> bytes:
        assert old in data, old
        return data.replace(old, new, count)

    return f


XXE = b'<?xml version="1.0"?>\n<!DOCTYPE SoftwareIdentity [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
LAUGHS = (
    b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>\n'
)

MALFORMED = {
    "xxe": lambda d: XXE + d.replace(b'name="GH100"', b'name="&xxe;"', 1),
    "billion_laughs": lambda d: LAUGHS + d.replace(b'name="GH100"', b'name="&lol3;"', 1),
    "external_dtd": lambda d: (
        b'<!DOCTYPE SoftwareIdentity SYSTEM "http://127.0.0.1:9/x.dtd">\n' + d
    ),
    "parameter_entity": lambda d: (
        b'<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p">%p;]>' + d
    ),
    "undefined_entity": _mutate(b'name="GH100"', b'name="&nope;"'),
    "oversized": lambda d: d.replace(b"</ns0:Payload>", b" " * MAX_RIM_BYTES + b"</ns0:Payload>"),
    "empty": lambda d: b"",
    "not_utf8": lambda d: d.replace(b'name="GH100"', b'name="GH\xff00"', 1),
    "nul": lambda d: d.replace(b'name="GH100"', b'name="GH\x0000"', 1),
    "wrong_namespace": lambda d: d.replace(
        b"iso/19770/-2/2015/schema.xsd", b"iso/19770/-2/2009/schema.xsd"
    ),
    "wrong_root": _mutate(b"<SoftwareIdentity ", b"<SoftwareIdentityX "),
    "comment": _mutate(b"<ns0:Payload", b"<!-- hi --><ns0:Payload"),
    "processing_instruction": _mutate(b"<ns0:Payload", b"<?pi x?><ns0:Payload"),
    "cdata": _mutate(b"</ns0:Payload>", b"<![CDATA[x]]></ns0:Payload>"),
    "duplicate_index": _mutate(b'index="8" ', b'index="7" '),
    "index_out_of_range": _mutate(b'index="63" ', b'index="254" '),
    "index_not_decimal": _mutate(b'index="8" ', b'index="0x8" '),
    "index_leading_zero": _mutate(b'index="8" ', b'index="08" '),
    "non_hex_hash": lambda d: flip_to(d, b"g"),
    "short_hash": _mutate(b'ns2:Hash0="0e0ee161', b'ns2:Hash0="0e0ee1'),
    "active_lowercase": _mutate(b'active="True"', b'active="true"'),
    "active_missing": _mutate(b'index="7" active="True" ', b'index="7" '),
    "size_not_48": _mutate(b'size="48"', b'size="32"'),
    "alternatives_zero": _mutate(
        b'index="7" active="True" alternatives="1"', b'index="7" active="True" alternatives="0"'
    ),
    "alternatives_too_many": _mutate(
        b'index="7" active="True" alternatives="1"', b'index="7" active="True" alternatives="2"'
    ),
    "extra_hash": _mutate(
        b'ns2:Hash0="0e0ee161', b'ns2:Hash1="' + b"00" * 48 + b'" ns2:Hash0="0e0ee161'
    ),
    "hash_in_other_namespace": _mutate(
        b'xmlns:ns2="http://www.w3.org/2001/04/xmlenc#sha384"',
        b'xmlns:ns2="http://www.w3.org/2001/04/xmlenc#sha256"',
    ),
    "unknown_resource_attribute": _mutate(
        b'name="Measurement_7"', b'name="Measurement_7" extra="1"'
    ),
    "resource_type": _mutate(b'type="Measurement" index="7"', b'type="File" index="7"'),
    "resource_with_text": _mutate(
        b'name="Measurement_7" size="48"/>', b'name="Measurement_7" size="48">x</ns0:Resource>'
    ),
    "text_in_payload": _mutate(b"</ns0:Payload>", b"junk</ns0:Payload>"),
    "no_meta": lambda d: re.sub(rb"<ns0:Meta [^>]*/>", b"", d, count=1),
    "no_version": _mutate(b'colloquialVersion="545.00" ', b""),
    "odd_version": _mutate(b'colloquialVersion="545.00"', b'colloquialVersion="banana"'),
    "no_entity": lambda d: re.sub(rb"<ns0:Entity [^>]*/>", b"", d, count=1),
    "no_tag_creator": _mutate(b'role="softwareCreator tagCreator"', b'role="softwareCreator"'),
    "no_tag_id": lambda d: re.sub(rb' tagId="[0-9a-f]+"', b"", d, count=1),
    "empty_payload": lambda d: re.sub(
        rb"<ns0:Payload[^>]*>.*</ns0:Payload>", b"<ns0:Payload></ns0:Payload>", d, flags=re.S
    ),
    "no_signature": lambda d: re.sub(rb"<ds:Signature .*</ds:Signature>", b"", d, flags=re.S),
    "two_signatures": lambda d: d.replace(
        b"</SoftwareIdentity>",
        re.search(rb"<ds:Signature .*</ds:Signature>", d, re.S).group(0) + b"</SoftwareIdentity>",
    ),  # type: ignore[union-attr]
    "c14n_10": _mutate(
        b'Algorithm="http://www.w3.org/2006/12/xml-c14n11"/><ds:SignatureMethod',
        b'Algorithm="http://www.w3.org/TR/2001/REC-xml-c14n-20010315"/><ds:SignatureMethod',
    ),
    "rsa_method": _mutate(b"xmldsig-more#ecdsa-sha384", b"xmldsig-more#rsa-sha384"),
    "sha256_digest": _mutate(
        b'<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#sha384"',
        b'<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"',
    ),
    "reference_uri_fragment": _mutate(b'<ds:Reference URI=""', b'<ds:Reference URI="#x"'),
    "missing_enveloped_transform": lambda d: d.replace(
        b'<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>', b""
    ),
    "xpath_transform": _mutate(
        b"<ds:Transforms>",
        b'<ds:Transforms><ds:Transform Algorithm="http://www.w3.org/TR/1999/REC-xpath-19991116"/>',
    ),
    "key_value": _mutate(b"<ds:KeyInfo>", b"<ds:KeyInfo><ds:KeyValue/>"),
    "short_signature_value": lambda d: re.sub(
        rb"<ds:SignatureValue>[^<]+", b"<ds:SignatureValue>AAAA", d
    ),
    "bad_certificate": lambda d: re.sub(
        rb"<ds:X509Certificate>MII", b"<ds:X509Certificate>AII", d, count=1
    ),
    "certificate_not_base64": lambda d: re.sub(
        rb"<ds:X509Certificate>MII", b"<ds:X509Certificate>M!I", d, count=1
    ),
    "trailing_element": _mutate(b"</SoftwareIdentity>", b"</SoftwareIdentity><x/>"),
    "trailing_text": _mutate(b"</SoftwareIdentity>", b"</SoftwareIdentity>junk"),
    "truncated": lambda d: d[: len(d) // 2],
    "utf16_declaration": lambda d: b'<?xml version="1.0" encoding="UTF-16"?>' + d,
}


def flip_to(data: bytes, char: bytes) -> bytes:
    pos = data.index(b'ns2:Hash0="0e0ee161') + len(b'ns2:Hash0="')
    return data[:pos] + char + data[pos + 1 :]


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_rims_raise_rim_parse_error(name: str) -> None:
    data = MALFORMED[name](driver_bytes())
    assert data != driver_bytes()
    with pytest.raises(RimParseError) as err:
        parse_rim(data)
    assert isinstance(err.value, ParseError)
    assert "/etc/passwd" not in str(err.value) or name == "xxe"
    assert "root:" not in str(err.value)  # no file content ever leaks into a message


def _with_root_attributes(data: bytes, extra: bytes) -> bytes:
    head, rest = data.split(b"<SoftwareIdentity ", 1)
    return head + b"<SoftwareIdentity" + extra + b" " + rest


def test_namespace_and_attribute_floods_are_refused_before_canonicalisation() -> None:
    """A stapled RIM whose root declared ~15,000 namespaces (still under MAX_RIM_BYTES) cost
    minutes of CPU in canonicalisation, before any signature or certificate was judged, per
    device it was offered for; ~27,000 attributes on Meta cost seconds. Both are refused by
    count, at once; the real RIMs are well inside the bounds (6 declarations, 12 attributes)."""
    import time

    from attest.nvidia.rim_parse import (
        MAX_ELEMENT_ATTRIBUTES,
        MAX_NAMESPACE_DECLARATIONS,
        parse_rim_with_content,
    )

    for path in ALL_RIMS:
        assert path.read_bytes().count(b"xmlns") <= MAX_NAMESPACE_DECLARATIONS // 4
    declarations = b"".join(b' xmlns:q%x="u:"' % i for i in range(14000))
    flood = _with_root_attributes(driver_bytes(), declarations)
    assert len(flood) <= MAX_RIM_BYTES
    attributes = b"".join(b' a%x=""' % i for i in range(MAX_ELEMENT_ATTRIBUTES + 1))
    crowded = driver_bytes().replace(b"<ns0:Meta ", b"<ns0:Meta" + attributes + b" ", 1)
    for doc, what in ((flood, "namespaces"), (crowded, "attributes")):
        start = time.process_time()
        with pytest.raises(RimParseError, match=what):
            parse_rim_with_content(doc)
        assert time.process_time() - start < 1.0  # the flood took ~12 s to canonicalise
    # At the bounds the canonical form is cheap and the parse goes on to its next check.
    near = _with_root_attributes(
        driver_bytes(),
        b"".join(
            b' xmlns:q%d="u:%d"' % (i, i)
            for i in range(MAX_NAMESPACE_DECLARATIONS - driver_bytes().count(b"xmlns"))
        ),
    )
    rim, content = parse_rim_with_content(near)
    assert rim.version == "545.00" and content


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # AuthorityKeyIdentifier renamed SubjectKeyIdentifier: the extension appears twice
        (bytes.fromhex("0603551d23"), bytes.fromhex("0603551d0e")),
        (bytes.fromhex("a003020102"), bytes.fromhex("a003020103")),  # X.509 version 4
    ],
)
def test_a_keyinfo_certificate_cryptography_cannot_decode_is_a_parse_error(
    old: bytes, new: bytes
) -> None:
    """DuplicateExtension and InvalidVersion are not ValueErrors: a stapled RIM carrying such a
    certificate raised them untyped through the broker's appraisal (INTERNAL, the nonce spent),
    the RIM service fetch and the audit replay."""
    import base64

    src = VBIOS_PROD.read_bytes()
    m = re.search(rb"<ds:X509Certificate>([^<]+)</ds:X509Certificate>", src)
    assert m is not None
    der = base64.b64decode(b"".join(m.group(1).split()))
    assert der.count(old) >= 1
    edited = base64.encodebytes(der.replace(old, new, 1))
    with pytest.raises(RimParseError, match="malformed certificate"):
        parse_rim(src[: m.start(1)] + edited + src[m.end(1) :])


def test_xml_declaration_utf8_is_accepted() -> None:
    rim = parse_rim(b'<?xml version="1.0" encoding="UTF-8"?>\n' + driver_bytes())
    assert rim.version == "545.00"


def test_non_bytes_refused() -> None:
    with pytest.raises(RimParseError):
        parse_rim(driver_bytes().decode())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# RimVerifier cache


def test_rim_verifier_remembers_by_exact_bytes_within_the_window() -> None:
    verifier = RimVerifier(chain_cache=ChainCache())
    first = verifier.verify(driver_bytes(), at=RIM_ERA)
    assert len(verifier) == 1
    again = verifier.verify(driver_bytes(), at=RIM_ERA.replace(month=7))
    assert again is first
    parsed = parse_rim(driver_bytes())
    assert verifier.verify(parsed, at=RIM_ERA) is first  # same bytes, same content
    with pytest.raises(RimChainError):
        verifier.verify(driver_bytes(), at=TODAY)  # outside the window: full check, fails
    tampered = flip_hash_digit(driver_bytes(), 7)
    with pytest.raises(RimVerificationError):
        verifier.verify(tampered, at=RIM_ERA)
    with pytest.raises(RimVerificationError):
        verifier.verify(tampered, at=RIM_ERA)  # failures are not remembered
    assert len(verifier) == 1


def test_rim_verifier_does_not_answer_for_edited_fields() -> None:
    verifier = RimVerifier()
    rim = parse_rim(driver_bytes())
    verifier.verify(rim, at=RIM_ERA)
    forged = dataclasses.replace(rim, version="999.99")
    with pytest.raises(RimVerificationError) as err:
        verifier.verify(forged, at=RIM_ERA)
    assert err.value.reason == "rim_signature_wrapping"


def test_rim_verifier_is_bounded() -> None:
    verifier = RimVerifier(max_entries=2)
    for path in ALL_RIMS[:3]:
        verifier.verify(path.read_bytes(), at=RIM_ERA)
    assert len(verifier) == 2


def test_rim_verifier_parse_errors_stay_parse_errors() -> None:
    with pytest.raises(RimParseError):
        RimVerifier().verify(b"<x/>", at=RIM_ERA)


def test_errors_are_typed() -> None:
    assert issubclass(RimChainError, VerificationError)
    assert issubclass(RimVerificationError, VerificationError)
    assert issubclass(RimParseError, ParseError)
    assert isinstance(parse_rim(driver_bytes()), Rim)
    assert RimMeasurement(index=3, name="x", active=True, size=48, alternatives=()).block_index == 4


def test_hardened_lxml_parser_does_not_resolve_external_entities(tmp_path: Path) -> None:
    """Behind the byte pre-scan: the lxml parser itself neither reads files nor expands."""
    from lxml import etree

    from attest.nvidia.rim_parse import hardened_parser

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER")
    doc = (f'<!DOCTYPE r [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]><r>&xxe;</r>').encode()
    try:
        root = etree.fromstring(doc, parser=hardened_parser())
    except etree.XMLSyntaxError:
        return  # refused outright: fine
    assert "TOP-SECRET-MARKER" not in etree.tostring(root).decode()
    assert "TOP-SECRET-MARKER" not in "".join(root.itertext())


# ---------------------------------------------------------------------------------------------
# synthetic RIMs: NVIDIA's content re-signed by a test CA made here (keys live only in the test)


def _test_pki(*, leaf_ca: bool = False, leaf_sign: bool = True, leaf_p256: bool = False):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    t0, t1 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)
    root_key, leaf_key = (
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP256R1() if leaf_p256 else ec.SECP384R1()),
    )
    root = (
        x509.CertificateBuilder()
        .subject_name(name("Test RIM Root"))
        .issuer_name(name("Test RIM Root"))
        .public_key(root_key.public_key())
        .serial_number(1)
        .not_valid_before(t0)
        .not_valid_after(t1)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA384())
    )
    usage = x509.KeyUsage(
        digital_signature=leaf_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not leaf_sign,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("Test RIM Signer"))
        .issuer_name(root.subject)
        .public_key(leaf_key.public_key())
        .serial_number(2)
        .not_valid_before(t0)
        .not_valid_after(t1)
        .add_extension(x509.BasicConstraints(ca=leaf_ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(root_key, hashes.SHA384())
    )
    return root, leaf, leaf_key


def _resign(data: bytes, leaf, leaf_key, root) -> bytes:  # type: ignore[no-untyped-def]
    from lxml import etree
    from signxml import XMLSigner
    from signxml.algorithms import (
        CanonicalizationMethod,
        DigestAlgorithm,
        SignatureConstructionMethod,
        SignatureMethod,
    )

    from attest.nvidia.rim_parse import DS_NS

    doc = etree.fromstring(data)
    doc.remove(doc.find(f"{{{DS_NS}}}Signature"))
    signer = XMLSigner(
        method=SignatureConstructionMethod.enveloped,
        signature_algorithm=SignatureMethod.ECDSA_SHA384,
        digest_algorithm=DigestAlgorithm.SHA384,
        c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
    )
    signer.namespaces = {"ds": DS_NS}
    return bytes(etree.tostring(signer.sign(doc, key=leaf_key, cert=[leaf, root])))


def test_synthetic_rim_verifies_only_under_its_own_root() -> None:
    from datetime import UTC, datetime

    root, leaf, key = _test_pki()
    data = _resign(driver_bytes(), leaf, key, root)
    rim = parse_rim(data)
    assert rim.measurements == parse_rim(driver_bytes()).measurements
    assert len(rim.signer_chain) == 1  # the trailing self-signed root copy is dropped
    at = datetime(2025, 1, 1, tzinfo=UTC)
    assert verify_rim(rim, at=at, root=root).signer == leaf
    with pytest.raises(RimChainError):
        verify_rim(rim, at=at)  # never under NVIDIA's pinned root
    with pytest.raises(RimVerificationError) as err:  # re-signed content edited afterwards
        verify_rim(parse_rim(flip_hash_digit(data, 7)), at=at, root=root)
    assert err.value.reason == "rim_signature"


@pytest.mark.parametrize(("leaf_ca", "leaf_sign"), [(True, True), (False, False)])
def test_signer_must_be_an_end_entity_allowed_to_sign(leaf_ca: bool, leaf_sign: bool) -> None:
    from datetime import UTC, datetime

    root, leaf, key = _test_pki(leaf_ca=leaf_ca, leaf_sign=leaf_sign)
    rim = parse_rim(_resign(driver_bytes(), leaf, key, root))
    with pytest.raises(RimVerificationError) as err:
        verify_rim(rim, at=datetime(2025, 1, 1, tzinfo=UTC), root=root)
    assert err.value.reason == "rim_signer"


def test_a_rim_signer_key_other_than_p384_is_refused() -> None:
    """NVIDIA's RIM signers are P-384 (the signature method is ECDSA-SHA384); a signer on
    another curve under a trusted root is refused (mutation testing: no test failed without
    the check)."""
    import base64
    from datetime import UTC, datetime

    root, leaf, key = _test_pki(leaf_p256=True)
    signed = _resign(driver_bytes(), leaf, key, root)
    # P-256's r || s is 64 bytes; the parser takes only 96 (P-384's), and signxml splits a
    # signature in halves, so each half zero-padded to 48 bytes still verifies under P-256.
    m = re.search(rb"<ds:SignatureValue>([^<]+)</ds:SignatureValue>", signed)
    assert m is not None
    raw = base64.b64decode(b"".join(m.group(1).split()))
    assert len(raw) == 64
    padded = base64.b64encode(bytes(16) + raw[:32] + bytes(16) + raw[32:])
    rim = parse_rim(signed[: m.start(1)] + padded + signed[m.end(1) :])
    with pytest.raises(RimVerificationError) as err:
        verify_rim(rim, at=datetime(2025, 1, 1, tzinfo=UTC), root=root)
    assert err.value.reason == "rim_signer"
