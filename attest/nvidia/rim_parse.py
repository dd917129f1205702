"""Strict parser for NVIDIA's signed SWID reference integrity manifests (RIMs).

A RIM is an ISO/IEC 19770-2:2015 SWID tag with TCG RIM extensions, carrying the golden
measurements of one driver or VBIOS release, enveloped-signed with XML-DSig. NVIDIA's own verifier
reads it with a permissive lxml parser, matches element names by substring and trusts any
``active`` value other than ``"False"``; this parser instead accepts exactly the shape NVIDIA
publishes and refuses everything else before any cryptography runs:

* size bounded (``MAX_RIM_BYTES``) and UTF-8 only;
* no DOCTYPE, entity declaration, comment, CDATA section or processing instruction (checked on
  the bytes, before lxml sees them, so XXE and billion-laughs payloads never reach a parser);
  lxml itself runs with entity resolution, DTD loading and network access off;
* the root is ``SoftwareIdentity`` in the SWID namespace with, in this order, one or more
  ``Entity``, exactly one ``Meta``, exactly one ``Payload`` and exactly one ``ds:Signature`` as
  the last child — a second Payload or a displaced Signature (signature wrapping) is refused here;
* every ``Resource`` is a SHA-384 measurement: known attributes only, ``active`` exactly
  ``True``/``False``, a unique index in range, ``size`` 48 and exactly ``alternatives`` hashes
  ``Hash0..HashN-1`` of 96 hex digits in the ``xmlenc#sha384`` namespace;
* the signature profile is pinned (C14N 1.1, ECDSA-SHA384, one Reference with ``URI=""``,
  enveloped + C14N 1.1 transforms, SHA-384 digest, a 96-byte raw r||s value) and its KeyInfo is
  exactly one X509Data holding DER certificates.

Parsing proves nothing about authenticity: only ``attest.nvidia.rim_verify`` does, and it
re-reads the measurements from the bytes the signature covers.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from lxml import etree

from attest.errors import ParseError
from attest.x509chain import X509_DECODE_ERRORS, signed_der_canonical

#: Largest RIM accepted. NVIDIA's are about 20 KiB (64 resources, up to 4 alternatives); 256 KiB
#: leaves room for bigger parts without letting a hostile file cost real parse time.
MAX_RIM_BYTES = 256 * 1024
#: SPDM measurement blocks are numbered 1..254 and RIM index k maps to block k+1, so a RIM index
#: is at most 253 and a RIM holds at most 254 resources.
MAX_RIM_INDEX = 253
MAX_RESOURCES = MAX_RIM_INDEX + 1
#: Alternatives per measurement (NVIDIA's RIMs use at most 4).
MAX_ALTERNATIVES = 16
#: Certificates in KeyInfo/X509Data (NVIDIA's carry 4: signer, two CAs, a copy of the root).
MAX_RIM_CERTS = 8
#: One base64 certificate text larger than this is not a certificate (real ones are ~1 KiB).
MAX_CERT_B64_CHARS = 16 * 1024
#: Any identity attribute value (names, versions, ids) longer than this is refused.
MAX_ATTR_CHARS = 256
#: Entities (the creator and friends) in one tag.
MAX_ENTITIES = 8
#: Namespace declarations in one document (NVIDIA's RIMs make 6), and attributes on one element
#: (they carry at most 12). Canonicalisation, which runs before any signature or certificate is
#: judged, costs about (elements) x (namespaces in scope)^2, and a 256 KiB file holds ~16,000
#: declarations: one stapled RIM cost minutes of CPU per device before these bounds.
MAX_NAMESPACE_DECLARATIONS = 32
MAX_ELEMENT_ATTRIBUTES = 64

#: SHA-384, the only measurement hash NVIDIA uses: 48-byte values, 96 hex digits.
HASH_SIZE = 48

SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
TCG_RIM_NS = "https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-information-model/"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"

C14N11 = "http://www.w3.org/2006/12/xml-c14n11"
ECDSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"
DIGEST_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#sha384"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"

#: P-384 raw r||s.
SIGNATURE_VALUE_SIZE = 96

RimKind = Literal["driver", "vbios"]

_RESOURCE_TAG = f"{{{SWID_NS}}}Resource"
_HASH_KEYS = tuple(f"{{{SHA384_NS}}}Hash{i}" for i in range(MAX_ALTERNATIVES))
_HEX96 = re.compile(r"[0-9a-fA-F]{96}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,5}")
#: VBIOS (and NVSwitch BIOS) versions are five dot-separated hex bytes: 96.00.5E.00.01.
_VBIOS_VERSION = re.compile(r"[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}")
#: Driver versions are 2-4 dot-separated decimal numbers: 545.00, 550.90.07.
_DRIVER_VERSION = re.compile(r"[0-9]{1,5}(\.[0-9]{1,5}){1,3}")
_B64 = re.compile(r"[A-Za-z0-9+/=\s]+")

#: Byte sequences that never occur in a NVIDIA RIM and that carry XXE, entity expansion, or
#: content a canonicaliser drops from the signed form (comments) or treats specially.
_FORBIDDEN_MARKUP = (
    (b"<!DOCTYPE", "DOCTYPE"),
    (b"<!ENTITY", "entity declaration"),
    (b"<!--", "comment"),
    (b"<![CDATA[", "CDATA section"),
    (b"<!", "markup declaration"),
)
_XML_DECL = re.compile(
    rb"<\?xml[ \t]+version=(\"1\.0\"|'1\.0')([ \t]+encoding=(\"UTF-8\"|'UTF-8'|\"utf-8\"|'utf-8'))?[ \t]*\?>"
)


class RimParseError(ParseError):
    """Bytes that are not a well-formed NVIDIA SWID RIM of the expected shape."""


@dataclass(frozen=True)
class RimMeasurement:
    """One ``Resource``: the golden values for report block ``index + 1``."""

    index: int
    name: str
    active: bool
    size: int
    alternatives: tuple[bytes, ...]

    @property
    def block_index(self) -> int:
        """The SPDM measurement block this entry describes (RIM index k <-> block k+1)."""
        return self.index + 1


@dataclass(frozen=True)
class RimBody:
    """Everything a RIM asserts, read from the document with its signature set aside.

    Kept separately from ``Rim`` so the verifier can read the same fields again from the bytes
    the signature covers and compare (signature-wrapping defence).
    """

    tag_id: str
    name: str
    swid_version: str
    tag_version: str
    entity_name: str
    entity_roles: tuple[str, ...]
    version: str
    product: str
    edition: str | None
    revision: str | None
    payload_type: str | None
    manufacturer: str | None
    manufacturer_id: str | None
    platform_model: str | None
    firmware_manufacturer: str | None
    firmware_manufacturer_id: str | None
    binding_spec: str | None
    binding_spec_version: str | None
    measurements: tuple[RimMeasurement, ...]


@dataclass(frozen=True)
class Rim:
    """A parsed (not yet verified) RIM. ``raw`` is the exact signed document.

    ``version`` is the SWID ``colloquialVersion``: the driver or VBIOS version the RIM is for.
    ``kind`` follows from its format (five hex bytes: VBIOS or NVSwitch BIOS; decimal: driver).
    ``signer_chain`` is the certificates of KeyInfo/X509Data, signer first, without a trailing
    self-issued root copy (trust comes from the pinned root only); ``embedded_certificates`` is
    all of them as sent.
    """

    raw: bytes
    tag_id: str
    name: str
    version: str
    kind: RimKind
    product: str
    manufacturer: str | None
    manufacturer_id: str | None
    platform_model: str | None
    firmware_manufacturer: str | None
    firmware_manufacturer_id: str | None
    edition: str | None
    revision: str | None
    swid_version: str
    tag_version: str
    entity_name: str
    signer_chain: tuple[x509.Certificate, ...]
    embedded_certificates: tuple[x509.Certificate, ...]
    measurements: tuple[RimMeasurement, ...]
    body: RimBody

    @property
    def active_measurements(self) -> tuple[RimMeasurement, ...]:
        return tuple(m for m in self.measurements if m.active)

    def measurement(self, index: int) -> RimMeasurement | None:
        """The entry for RIM index ``index`` (not block index), if any."""
        for m in self.measurements:
            if m.index == index:
                return m
        return None

    def version_matches(self, version: str) -> bool:
        """Whether ``version`` (as the GPU reports it) is this RIM's version, case-insensitively.

        NVIDIA's verifier lower-cases both sides; VBIOS versions appear as ``96.00.5e.00.01`` in
        reports and ``96.00.5E.00.01`` in RIMs.
        """
        return version.strip().lower() == self.version.lower()


# --------------------------------------------------------------------------------------------
# lxml set-up


def _parser() -> etree.XMLParser:
    """A parser that cannot be talked into fetching, expanding or growing anything."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        remove_pis=False,
        remove_blank_text=False,
        collect_ids=False,
    )


def hardened_parser() -> etree.XMLParser:
    """The parser used for RIMs, also handed to signxml so both read the bytes the same way."""
    return _parser()


def _q(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}"


def _err(message: str, field: str | None = None) -> RimParseError:
    return RimParseError(message, field=field)


def _prescan(data: bytes) -> None:
    if not isinstance(data, bytes):
        raise _err("RIM must be given as bytes")
    if len(data) > MAX_RIM_BYTES:
        raise _err(f"RIM is {len(data)} bytes; the limit is {MAX_RIM_BYTES}")
    if not data.strip():
        raise _err("RIM is empty")
    if b"\x00" in data:
        raise _err("RIM contains a NUL byte")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _err(f"RIM is not UTF-8 (byte {exc.start})") from None
    pos = data.find(b"<!")  # every forbidden declaration starts so: one scan, then name it
    if pos >= 0:
        what = next(w for marker, w in _FORBIDDEN_MARKUP if data.startswith(marker, pos))
        raise RimParseError(f"RIM contains a {what}; refused", offset=pos)
    body = data.lstrip()
    if body.startswith(b"<?"):
        decl = _XML_DECL.match(body)
        if decl is None:
            raise _err("RIM starts with an XML declaration other than version 1.0 / UTF-8")
        body = body[decl.end() :]
    pos = body.find(b"<?")
    if pos >= 0:
        raise _err("RIM contains a processing instruction; refused")
    # Every declaration spells "xmlns" in its attribute name (no DTD, so no entity can stand
    # in for it); the word elsewhere only makes this count an upper bound.
    declarations = data.count(b"xmlns")
    if declarations > MAX_NAMESPACE_DECLARATIONS:
        raise _err(
            f"RIM declares up to {declarations} namespaces; the limit is "
            f"{MAX_NAMESPACE_DECLARATIONS}"
        )


def _attr(el: etree._Element, name: str, *, field: str, required: bool = True) -> str | None:
    value = el.get(name)
    if value is None:
        if required:
            raise _err(f"missing attribute {name!r}", field)
        return None
    if len(value) > MAX_ATTR_CHARS:
        raise _err(f"attribute {name!r} is longer than {MAX_ATTR_CHARS} characters", field)
    if required and not value.strip():
        raise _err(f"attribute {name!r} is empty", field)
    return value


def _attrs(el: etree._Element) -> dict[str, str]:
    """The attributes of ``el`` as a plain dict (lxml's keys and values are str here)."""
    return dict(el.attrib)  # type: ignore[arg-type]


def _req(el: etree._Element, name: str, *, field: str) -> str:
    value = _attr(el, name, field=field)
    assert value is not None
    return value


def _no_text(el: etree._Element, field: str) -> None:
    """Element-only content: whitespace between children is fine, text is not."""
    if el.text is not None and el.text.strip():
        raise _err("unexpected text content", field)
    for child in el:
        if child.tail is not None and child.tail.strip():
            raise _err("unexpected text content", field)


def _children(el: etree._Element, field: str) -> list[etree._Element]:
    out = []
    for child in el:
        if not isinstance(child.tag, str):  # comment / PI: excluded by the prescan, kept as a guard
            raise _err("unexpected comment or processing instruction", field)
        out.append(child)
    return out


# --------------------------------------------------------------------------------------------
# body


#: The attributes a measurement ``Resource`` must carry besides its ``Hash0..HashN-1`` values.
_RESOURCE_ATTRS = ("type", "index", "active", "alternatives", "size", "name")


def _parse_resource(el: etree._Element, position: int) -> RimMeasurement:
    """One measurement ``Resource``, strictly.

    Written for speed, since a RIM holds 64 of these and reading them was most of the cost of
    parsing one: each expected attribute is fetched once with ``get`` (no dict of all of them is
    built), and the attribute *count* must then equal what was read, so an unknown or extra
    attribute is still refused (the slow path only names it).
    """
    field = f"Payload/Resource[{position}]"
    if el.tag != _RESOURCE_TAG:
        raise _err(f"unexpected element {el.tag!r}", field)
    if len(el) or (el.text is not None and el.text.strip()):
        raise _err("Resource must be empty", field)
    get = el.get
    values: list[str] = []
    for attr in _RESOURCE_ATTRS:
        value = get(attr)
        if value is None:
            raise _err(f"missing attribute {attr!r}", field)
        if len(value) > MAX_ATTR_CHARS:
            raise _err(f"attribute {attr!r} is longer than {MAX_ATTR_CHARS} characters", field)
        values.append(value)
    type_text, index_text, active_text, alternatives_text, size_text, name = values
    if type_text != "Measurement":
        raise _err("Resource type must be 'Measurement'", field)
    index = _decimal(index_text, "index", field)
    if index > MAX_RIM_INDEX:
        raise _err(f"index {index} is above {MAX_RIM_INDEX}", field)
    if active_text not in ("True", "False"):
        raise _err(f"active must be 'True' or 'False', not {active_text[:20]!r}", field)
    alternatives = _decimal(alternatives_text, "alternatives", field)
    if not 1 <= alternatives <= MAX_ALTERNATIVES:
        raise _err(f"alternatives must be 1..{MAX_ALTERNATIVES}, not {alternatives}", field)
    size = _decimal(size_text, "size", field)
    if size != HASH_SIZE:
        raise _err(f"size must be {HASH_SIZE} (SHA-384), not {size}", field)
    if not name.strip():
        raise _err("attribute 'name' is empty", field)
    hashes = []
    for i in range(alternatives):
        text = get(_HASH_KEYS[i])
        if text is None:
            raise _err(f"alternatives={alternatives} but no SHA-384 Hash{i}", field)
        if _HEX96.fullmatch(text) is None:
            raise _err(f"Hash{i} is not 96 hex digits (SHA-384)", field)
        hashes.append(bytes.fromhex(text))
    if len(el.attrib) != len(_RESOURCE_ATTRS) + alternatives:
        known = {*_RESOURCE_ATTRS, *_HASH_KEYS[:alternatives]}
        extra = sorted(k for k in _attrs(el) if k not in known)[0]
        if extra.startswith(f"{{{SHA384_NS}}}Hash"):
            raise _err(f"more hashes than alternatives={alternatives}", field)
        raise _err(f"unknown attribute {extra!r}", field)
    return RimMeasurement(
        index=index, name=name, active=active_text == "True", size=size, alternatives=tuple(hashes)
    )


#: Canonical decimal spellings of the small numbers RIM attributes use, answered without a regex
#: (str(i) has no sign, no leading zero and ASCII digits only, exactly what ``_DECIMAL`` allows).
_SMALL_DECIMALS = {str(i): i for i in range(MAX_RESOURCES + 1)}


def _decimal(text: str, what: str, field: str) -> int:
    small = _SMALL_DECIMALS.get(text)
    if small is not None:
        return small
    if _DECIMAL.fullmatch(text) is None:
        raise _err(f"{what} is not a small decimal number: {text[:20]!r}", field)
    return int(text)


def read_body(root: etree._Element) -> RimBody:
    """Read the identity and measurements of a SoftwareIdentity element.

    A ``ds:Signature`` child is skipped (it is checked by ``parse_rim``); every other child must
    be, in order, Entity+, Meta, Payload.
    """
    if root.tag != _q(SWID_NS, "SoftwareIdentity"):
        raise _err(f"root element is {root.tag!r}, not SWID SoftwareIdentity", "SoftwareIdentity")
    _no_text(root, "SoftwareIdentity")
    kids = [c for c in _children(root, "SoftwareIdentity") if c.tag != _q(DS_NS, "Signature")]
    entities = []
    i = 0
    while i < len(kids) and kids[i].tag == _q(SWID_NS, "Entity"):
        entities.append(kids[i])
        i += 1
    if not entities:
        raise _err("no Entity element before Meta", "SoftwareIdentity")
    if len(entities) > MAX_ENTITIES:
        raise _err(f"more than {MAX_ENTITIES} Entity elements", "SoftwareIdentity")
    if i >= len(kids) or kids[i].tag != _q(SWID_NS, "Meta"):
        raise _err("expected exactly one Meta after the Entity elements", "SoftwareIdentity")
    meta = kids[i]
    if i + 1 >= len(kids) or kids[i + 1].tag != _q(SWID_NS, "Payload"):
        raise _err("expected exactly one Payload after Meta", "SoftwareIdentity")
    payload = kids[i + 1]
    if len(kids) != i + 2:
        extra = kids[i + 2]
        raise _err(f"unexpected element {extra.tag!r} after Payload", "SoftwareIdentity")

    f = "SoftwareIdentity"
    tag_id = _req(root, "tagId", field=f)
    name = _req(root, "name", field=f)
    swid_version = _attr(root, "version", field=f, required=False) or "0.0"
    tag_version = _attr(root, "tagVersion", field=f, required=False) or "0"

    creator = None
    for n, ent in enumerate(entities):
        ef = f"Entity[{n}]"
        if len(ent) or (ent.text is not None and ent.text.strip()):
            raise _err("Entity must be empty", ef)
        roles = tuple(_req(ent, "role", field=ef).split())
        if "tagCreator" in roles and creator is None:
            creator = (_req(ent, "name", field=ef), roles)
    if creator is None:
        raise _err("no Entity with role tagCreator", "Entity")

    mf = "Meta"
    if len(meta) or (meta.text is not None and meta.text.strip()):
        raise _err("Meta must be empty", mf)
    version = _req(meta, "colloquialVersion", field=mf)
    product = _req(meta, "product", field=mf)

    def tcg(local: str) -> str | None:
        return _attr(meta, _q(TCG_RIM_NS, local), field=mf, required=False)

    pf = "Payload"
    if payload.attrib:
        raise _err(f"unexpected attribute {next(iter(payload.attrib))!r}", pf)
    _no_text(payload, pf)
    resources = _children(payload, pf)
    if not resources:
        raise _err("Payload holds no Resource", pf)
    if len(resources) > MAX_RESOURCES:
        raise _err(f"Payload holds {len(resources)} resources; the limit is {MAX_RESOURCES}", pf)
    measurements = []
    seen: set[int] = set()
    for pos, res in enumerate(resources):
        m = _parse_resource(res, pos)
        if m.index in seen:
            raise _err(f"index {m.index} appears twice", f"Payload/Resource[{pos}]")
        seen.add(m.index)
        measurements.append(m)

    return RimBody(
        tag_id=tag_id,
        name=name,
        swid_version=swid_version,
        tag_version=tag_version,
        entity_name=creator[0],
        entity_roles=creator[1],
        version=version,
        product=product,
        edition=_attr(meta, "edition", field=mf, required=False),
        revision=_attr(meta, "revision", field=mf, required=False),
        payload_type=_attr(meta, "PayloadType", field=mf, required=False),
        manufacturer=tcg("PlatformManufacturerStr"),
        manufacturer_id=tcg("PlatformManufacturerId"),
        platform_model=tcg("PlatformModel"),
        firmware_manufacturer=tcg("FirmwareManufacturer"),
        firmware_manufacturer_id=tcg("FirmwareManufacturerId"),
        binding_spec=tcg("BindingSpec"),
        binding_spec_version=tcg("BindingSpecVersion"),
        measurements=tuple(measurements),
    )


# --------------------------------------------------------------------------------------------
# signature element


def _only(el: etree._Element, local: str, field: str) -> etree._Element:
    kids = _children(el, field)
    if len(kids) != 1 or kids[0].tag != _q(DS_NS, local):
        raise _err(f"expected exactly one ds:{local}", field)
    return kids[0]


def _algorithm(el: etree._Element, expected: str, field: str) -> None:
    if len(el) or (el.text is not None and el.text.strip()):
        raise _err("algorithm element must be empty", field)
    if _attrs(el) != {"Algorithm": expected}:
        raise _err(f"algorithm must be exactly {expected}", field)


def _b64(text: str | None, field: str, *, limit: int) -> bytes:
    if text is None or not text.strip():
        raise _err("empty base64 value", field)
    if len(text) > limit:
        raise _err(f"base64 value longer than {limit} characters", field)
    if _B64.fullmatch(text) is None:
        raise _err("not base64", field)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _err("not base64", field) from None


def _parse_signature(
    sig: etree._Element, certificates: CertificateMemo | None = None
) -> tuple[x509.Certificate, ...]:
    f = "Signature"
    if sig.attrib:
        raise _err("unexpected attribute on ds:Signature", f)
    _no_text(sig, f)
    kids = _children(sig, f)
    if [k.tag for k in kids] != [
        _q(DS_NS, "SignedInfo"),
        _q(DS_NS, "SignatureValue"),
        _q(DS_NS, "KeyInfo"),
    ]:
        raise _err("expected SignedInfo, SignatureValue, KeyInfo and nothing else", f)
    signed_info, sig_value, key_info = kids

    f = "SignedInfo"
    if signed_info.attrib:
        raise _err("unexpected attribute", f)
    _no_text(signed_info, f)
    si = _children(signed_info, f)
    if [k.tag for k in si] != [
        _q(DS_NS, "CanonicalizationMethod"),
        _q(DS_NS, "SignatureMethod"),
        _q(DS_NS, "Reference"),
    ]:
        raise _err("expected CanonicalizationMethod, SignatureMethod and one Reference", f)
    _algorithm(si[0], C14N11, "SignedInfo/CanonicalizationMethod")
    _algorithm(si[1], ECDSA_SHA384, "SignedInfo/SignatureMethod")
    ref = si[2]
    f = "SignedInfo/Reference"
    if _attrs(ref) != {"URI": ""}:
        raise _err('the Reference must be URI="" (the whole document) and nothing else', f)
    _no_text(ref, f)
    rk = _children(ref, f)
    if [k.tag for k in rk] != [
        _q(DS_NS, "Transforms"),
        _q(DS_NS, "DigestMethod"),
        _q(DS_NS, "DigestValue"),
    ]:
        raise _err("expected Transforms, DigestMethod, DigestValue", f)
    transforms = _children(rk[0], f + "/Transforms")
    _no_text(rk[0], f + "/Transforms")
    if len(transforms) != 2 or rk[0].attrib:
        raise _err("expected exactly the enveloped-signature and C14N 1.1 transforms", f)
    for t, alg in zip(transforms, (ENVELOPED, C14N11), strict=True):
        if t.tag != _q(DS_NS, "Transform"):
            raise _err("expected ds:Transform", f + "/Transforms")
        _algorithm(t, alg, f + "/Transforms/Transform")
    _algorithm(rk[1], DIGEST_SHA384, f + "/DigestMethod")
    if rk[2].attrib or len(rk[2]):
        raise _err("DigestValue must hold text only", f + "/DigestValue")
    if len(_b64(rk[2].text, f + "/DigestValue", limit=256)) != 48:
        raise _err("DigestValue is not 48 bytes (SHA-384)", f + "/DigestValue")

    f = "SignatureValue"
    if sig_value.attrib or len(sig_value):
        raise _err("SignatureValue must hold text only", f)
    if len(_b64(sig_value.text, f, limit=512)) != SIGNATURE_VALUE_SIZE:
        raise _err(f"SignatureValue is not {SIGNATURE_VALUE_SIZE} bytes (P-384 r||s)", f)

    f = "KeyInfo"
    if key_info.attrib:
        raise _err("unexpected attribute", f)
    _no_text(key_info, f)
    x509_data = _only(key_info, "X509Data", f)
    f = "KeyInfo/X509Data"
    _no_text(x509_data, f)
    cert_els = _children(x509_data, f)
    if not cert_els:
        raise _err("no X509Certificate", f)
    if len(cert_els) > MAX_RIM_CERTS:
        raise _err(f"{len(cert_els)} certificates; the limit is {MAX_RIM_CERTS}", f)
    certs = []
    for n, ce in enumerate(cert_els):
        cf = f"{f}/X509Certificate[{n}]"
        if ce.tag != _q(DS_NS, "X509Certificate") or ce.attrib or len(ce):
            raise _err("expected an X509Certificate holding base64 text only", cf)
        der = _b64(ce.text, cf, limit=MAX_CERT_B64_CHARS)
        certs.append(
            certificates.load(der, cf) if certificates is not None else _load_certificate(der, cf)
        )
    return tuple(certs)


def _load_certificate(der: bytes, field: str) -> x509.Certificate:
    """Load a DER certificate and touch every field later checks read.

    ``cryptography`` decodes names, extensions and keys lazily; a damaged subject would
    otherwise surface as a bare ValueError deep inside chain verification.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
        _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
        _ = (cert.extensions, cert.signature_hash_algorithm, cert.serial_number)
        cert.public_key()
    except (*X509_DECODE_ERRORS, UnsupportedAlgorithm) as exc:  # DuplicateExtension is no
        raise _err(f"malformed certificate: {str(exc)[:120]}", field) from None  # ValueError
    if not signed_der_canonical(der):  # as every certificate lessee loads (x509chain)
        raise _err("malformed certificate: signature BIT STRING is not DER (unused bits)", field)
    return cert


#: Certificates one ``CertificateMemo`` keeps: a fleet's RIMs are signed by a handful of L4
#: signers under one L3, CA and root, so a few dozen is plenty.
DEFAULT_CERTIFICATE_MEMO_ENTRIES = 64


class CertificateMemo:
    """KeyInfo certificates already loaded and checked, by their exact DER (bounded, oldest
    out first, thread-safe).

    The driver and VBIOS RIMs of a GPU embed the same L3, CA and root certificates; loading
    one and decoding every field ``_load_certificate`` touches costs about as much as a tenth
    of a RIM's parse. A certificate is immutable and equal DER gives an equal certificate, so a
    hit is exactly what loading again gives; a DER that failed to load is never kept.
    """

    def __init__(self, max_entries: int = DEFAULT_CERTIFICATE_MEMO_ENTRIES) -> None:
        self._max = max_entries
        self._entries: dict[bytes, x509.Certificate] = {}
        self._lock = threading.Lock()

    def load(self, der: bytes, field: str) -> x509.Certificate:
        """``_load_certificate(der, field)``, from memory when this DER loaded before."""
        hit = self._entries.get(der)
        if hit is not None:
            return hit
        cert = _load_certificate(der, field)
        with self._lock:
            self._entries[der] = cert
            while len(self._entries) > self._max:
                del self._entries[next(iter(self._entries))]
        return cert

    def __len__(self) -> int:
        return len(self._entries)


def _signer_chain(certs: tuple[x509.Certificate, ...]) -> tuple[x509.Certificate, ...]:
    """Drop a trailing self-issued certificate: it is a copy of the root, which is never trusted.

    NVIDIA's RIMs end with the "NVIDIA CoRIM signing Root CA"; nvtrust drops the last certificate
    unconditionally and appends its own pinned root. Dropping only a self-issued one gives the
    same result on every real RIM and cannot cut a real intermediate off a chain that omits it.
    """
    if len(certs) > 1 and certs[-1].subject == certs[-1].issuer:
        return certs[:-1]
    return certs


def _kind(version: str) -> RimKind:
    if _VBIOS_VERSION.fullmatch(version):
        return "vbios"
    if _DRIVER_VERSION.fullmatch(version):
        return "driver"
    raise _err(
        f"colloquialVersion {version[:40]!r} is neither a driver (545.00) nor a VBIOS "
        "(96.00.5E.00.01) version",
        "Meta",
    )


def parse_document(data: bytes) -> etree._Element:
    """Pre-scan and parse ``data`` with the hardened parser; return the root element."""
    _prescan(data)
    try:
        root = etree.fromstring(bytes(data), parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise _err(f"not well-formed XML: {exc.msg}") from None
    except (ValueError, etree.LxmlError) as exc:
        raise _err(f"not well-formed XML: {exc}") from None
    if root is None:
        raise _err("no root element")
    if root.getprevious() is not None or root.getnext() is not None:
        raise _err("content outside the root element")
    for el in root.iter():
        if len(el.attrib) > MAX_ELEMENT_ATTRIBUTES:
            raise _err(
                f"an element has {len(el.attrib)} attributes; the limit is "
                f"{MAX_ELEMENT_ATTRIBUTES}",
                str(el.tag)[:80],
            )
    return root


def parse_rim(data: bytes) -> Rim:
    """Parse a signed SWID RIM strictly; raise ``RimParseError`` on anything unexpected."""
    return _parse(data, with_content=False)[0]


def parse_rim_with_content(
    data: bytes, *, certificates: CertificateMemo | None = None
) -> tuple[Rim, bytes]:
    """``parse_rim``, plus the canonical form of the content its signature covers.

    The second value is the document with its ``ds:Signature`` removed (the enveloped-signature
    transform), canonicalised as the Reference's transforms say (C14N, no comments): the exact
    bytes whose digest the signature must cover. The verifier compares them with the bytes the
    XML-DSig library digested; if they are equal, every field of the returned ``Rim`` was read
    from a tree whose canonical form *is* the signed content, so nothing is read from outside the
    signature, and the document need not be parsed and read a second time.

    A document that parses but cannot be canonicalised (a relative namespace URI) is refused
    here with ``RimParseError``: no signature can cover it. ``certificates``: KeyInfo
    certificates loaded before (by another RIM of the same signer chain) are reused.
    """
    rim, content = _parse(data, with_content=True, certificates=certificates)
    assert content is not None
    return rim, content


def _signed_content(root: etree._Element, signature: etree._Element) -> bytes:
    """Apply the Reference's transforms to our own tree: drop the Signature element (keeping
    the text after it, as the enveloped-signature transform keeps every other node), then C14N
    as signxml does for the C14N 1.1 URI (inclusive, no comments). Mutates ``root``."""
    tail = signature.tail
    previous = signature.getprevious()
    root.remove(signature)
    if tail:
        if previous is not None:
            previous.tail = (previous.tail or "") + tail
        else:
            root.text = (root.text or "") + tail
    try:
        return etree.tostring(root, method="c14n", exclusive=False, with_comments=False)
    except etree.LxmlError as exc:  # e.g. a relative namespace URI, which C14N refuses
        raise _err(f"the document cannot be canonicalised (C14N): {str(exc)[:80]}") from None


def _parse(
    data: bytes, *, with_content: bool, certificates: CertificateMemo | None = None
) -> tuple[Rim, bytes | None]:
    root = parse_document(data)
    kids = _children(root, "SoftwareIdentity")
    sigs = [k for k in kids if k.tag == _q(DS_NS, "Signature")]
    if len(sigs) != 1:
        raise _err(f"expected exactly one ds:Signature, found {len(sigs)}", "SoftwareIdentity")
    if kids[-1] is not sigs[0]:
        raise _err("ds:Signature must be the last child of SoftwareIdentity", "SoftwareIdentity")
    nested = root.findall(f".//{_q(DS_NS, 'Signature')}")
    if len(nested) != 1:
        raise _err("a ds:Signature appears inside the signed content", "SoftwareIdentity")
    certs = _parse_signature(sigs[0], certificates)
    body = read_body(root)
    content = _signed_content(root, sigs[0]) if with_content else None
    rim = Rim(
        raw=bytes(data),
        tag_id=body.tag_id,
        name=body.name,
        version=body.version,
        kind=_kind(body.version),
        product=body.product,
        manufacturer=body.manufacturer,
        manufacturer_id=body.manufacturer_id,
        platform_model=body.platform_model,
        firmware_manufacturer=body.firmware_manufacturer,
        firmware_manufacturer_id=body.firmware_manufacturer_id,
        edition=body.edition,
        revision=body.revision,
        swid_version=body.swid_version,
        tag_version=body.tag_version,
        entity_name=body.entity_name,
        signer_chain=_signer_chain(certs),
        embedded_certificates=certs,
        measurements=body.measurements,
        body=body,
    )
    return rim, content
