"""Verify an SEV-SNP report: signature, AMD chain to a pinned ARK, VCEK/VLEK facts vs the report.

Trust comes from the SHA-256 of AMD's root keys (ARK-Milan, ARK-Genoa, ARK-Turin), pinned below
and shipped as package data in ``attest/roots/amd/``. Everything the host sends (VCEK, ASK, even
an ARK) is only a candidate until it chains to the pinned ARK of the product the VCEK names.

The checks, in the order ``verify_snp_report`` runs them (docs/snp.md explains each):

1. the report parses strictly (``attest.snp.report``) and says it is signed (not SIGNING_KEY=7);
2. exactly one leaf certificate of the kind the report names (VCEK or VLEK) was supplied;
3. the leaf's productName extension names a known product, equal to the one the report's signed
   CPUID fields name (report v3+);
4. a supplied ARK must be the pinned one for that product, byte for byte (a Genoa chain for a
   Milan VCEK is refused here); a missing ASK/ASVK is taken from package data;
5. every AMD certificate is signed with RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48 (the
   AlgorithmIdentifier is compared as DER to AMD's two encodings);
6. leaf -> ASK/ASVK -> pinned ARK, every certificate valid at ``at`` (``attest.x509chain``);
7. the leaf key is P-384 and the report signature (ECDSA P-384/SHA-384 over bytes [0, 0x2A0),
   r and s little-endian) verifies;
8. the leaf's TCB extensions equal REPORTED_TCB decoded with the product's layout;
9. VCEK only: hwID equals CHIP_ID (Turin: the 8-byte prefix, the rest zero), unless the report
   masks CHIP_ID; a VLEK carries no hwID;
10. optionally, AMD's CRL for the product (signed by the ARK, current at ``at``) does not list
    the ASK/ASVK: the verifier's own CRL for the report's key kind when it holds one
    (``held_crls``), else the one supplied with the evidence;
11. optionally, REPORT_DATA equals the expected 64 bytes (the session binding).

AMD's VCEK and VLEK certificates have serial number 0, which RFC 5280 forbids and which
``cryptography`` 50 loads with a ``CryptographyDeprecationWarning`` (a future release will refuse
them). ``load_amd_certificates`` is the one place that tolerates it, deliberately: it silences
exactly that warning while loading. Serial numbers play no part in SNP trust (the VCEK is bound
by its TCB and hwID extensions and its issuer's signature), so accepting 0 costs nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache, lru_cache
from importlib import resources
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from attest.errors import ChainError, InputError, ParseError, RevocationError, VerificationError
from attest.snp.report import (
    AttestationReport,
    Product,
    SigningKey,
    TcbVersion,
    parse_report,
)
from attest.timeutil import require_aware
from attest.x509chain import (
    ChainCache,
    VerifiedChain,
    describe,
    signature_bits_canonical,
    signed_der_canonical,
    verify_chain,
)

#: SHA-256 of the DER of each product's AMD Root Key (attest/roots/amd/PROVENANCE.md).
ARK_SHA256: dict[Product, str] = {
    Product.MILAN: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    Product.GENOA: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    Product.TURIN: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}
#: SHA-256 of the DER of the shipped intermediates (ASK for VCEKs, ASVK for VLEKs). They are
#: pinned so the package data cannot drift; a supplied intermediate need only chain to the ARK.
INTERMEDIATE_SHA256: dict[tuple[Product, SigningKey], str] = {
    (Product.MILAN, SigningKey.VCEK): (
        "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b"
    ),
    (Product.GENOA, SigningKey.VCEK): (
        "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521"
    ),
    (Product.TURIN, SigningKey.VCEK): (
        "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185"
    ),
    (Product.MILAN, SigningKey.VLEK): (
        "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5"
    ),
}
#: Package-data file holding (intermediate, ARK) for each (product, key kind).
_CHAIN_FILES: dict[tuple[Product, SigningKey], str] = {
    (Product.MILAN, SigningKey.VCEK): "ask_ark_milan.pem",
    (Product.GENOA, SigningKey.VCEK): "ask_ark_genoa.pem",
    (Product.TURIN, SigningKey.VCEK): "ask_ark_turin_vcek.pem",
    (Product.MILAN, SigningKey.VLEK): "ask_ark_milan_vlek.pem",
}

#: Leaf + intermediate + ARK for one product is three; a VLEK and an ASVK make five. More than
#: this is not an AMD chain.
MAX_AMD_CERTS = 6
#: One certificate input (DER, or a PEM bundle of the above). AMD's are under 2 KiB each.
MAX_AMD_CERT_INPUT_BYTES = 64 * 1024
#: AMD's CRLs list a handful of revoked intermediates; anything this large is not one.
MAX_CRL_BYTES = 256 * 1024

#: RSASSA-PSS AlgorithmIdentifier with SHA-384, MGF1-SHA-384, salt length 48, as AMD encodes it,
#: with and without the explicit (default) trailerField. No other algorithm is accepted.
AMD_PSS_SHA384_ALGIDS: frozenset[bytes] = frozenset(
    {
        bytes.fromhex(
            "304106092a864886f70d01010a3034a00f300d06096086480165030402020500a11c301a06092a864886"
            "f70d010108300d06096086480165030402020500a203020130"
        ),
        bytes.fromhex(
            "304606092a864886f70d01010a3039a00f300d06096086480165030402020500a11c301a06092a864886"
            "f70d010108300d06096086480165030402020500a203020130a303020101"
        ),
    }
)

# AMD VCEK/VLEK certificate extensions (AMD "Versioned Chip Endorsement Key" spec, table 8).
_AMD_OID = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = x509.ObjectIdentifier(f"{_AMD_OID}.1")
OID_PRODUCT_NAME = x509.ObjectIdentifier(f"{_AMD_OID}.2")
OID_BL_SPL = x509.ObjectIdentifier(f"{_AMD_OID}.3.1")
OID_TEE_SPL = x509.ObjectIdentifier(f"{_AMD_OID}.3.2")
OID_SNP_SPL = x509.ObjectIdentifier(f"{_AMD_OID}.3.3")
OID_RESERVED_SPLS = tuple(x509.ObjectIdentifier(f"{_AMD_OID}.3.{i}") for i in (4, 5, 6, 7))
OID_UCODE_SPL = x509.ObjectIdentifier(f"{_AMD_OID}.3.8")
OID_FMC_SPL = x509.ObjectIdentifier(f"{_AMD_OID}.3.9")
OID_HWID = x509.ObjectIdentifier(f"{_AMD_OID}.4")
OID_CSP_ID = x509.ObjectIdentifier(f"{_AMD_OID}.5")
#: hwID is the 64-byte CHIP_ID on Milan and Genoa, an 8-byte prefix of it on Turin.
HWID_BYTES = 64
TURIN_HWID_BYTES = 8
#: productName is short ("Milan-B0", "Turin"); a longer one is not AMD's.
MAX_PRODUCT_NAME_LEN = 64

#: Facts derived from one certificate (DER hash, algorithm check, AMD extensions) are memoised,
#: keyed by the certificate (cryptography hashes and compares certificates by their DER), so a
#: broker verifying the same VCEK again skips the work. Failures raise and are never cached.
#: A fleet has one VCEK per chip and TCB; this bounds memory, not correctness. Only
#: certificates of AMD's size are kept (theirs are ~1.5 KiB): the facts are taken before the
#: chain is checked, so a caller can send certificates of its own, and 4096 kept of up to 64
#: KiB each held ~0.5 GiB after the evidence was refused.
MAX_CACHED_CERT_FACTS = 512
MAX_MEMOISED_CERT_BYTES = 4096

_R = TypeVar("_R")


class _SmallCertMemo(Generic[_R]):
    """``fn`` memoised (LRU, ``MAX_CACHED_CERT_FACTS``) for certificates of at most
    ``MAX_MEMOISED_CERT_BYTES`` (to be signed); a larger one is computed each time and never
    kept."""

    def __init__(self, fn: Callable[[x509.Certificate], _R]) -> None:
        self._fn = fn
        self._cached = lru_cache(maxsize=MAX_CACHED_CERT_FACTS)(fn)
        self.__doc__ = fn.__doc__

    def __call__(self, cert: x509.Certificate) -> _R:
        if len(cert.tbs_certificate_bytes) > MAX_MEMOISED_CERT_BYTES:
            return self._fn(cert)
        return self._cached(cert)

    def kept(self) -> int:
        """How many certificates' facts are held now."""
        return self._cached.cache_info().currsize


_SERIAL_ZERO_WARNING = r"Parsed a serial number which wasn't positive"
#: ``warnings.catch_warnings`` swaps process-wide state; serialise our own loads around it.
_LOAD_LOCK = threading.Lock()


class CertRole(StrEnum):
    """What an AMD certificate is, from its subject CN (AMD names them fixedly)."""

    VCEK = "vcek"
    VLEK = "vlek"
    ASK = "ask"
    ASVK = "asvk"
    ARK = "ark"


_T = TypeVar("_T")

#: What ``cryptography`` raises for a certificate it cannot decode (not all are ValueErrors).
_CERT_DECODE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def _tolerating_serial_zero(load: Callable[[bytes], _T], data: bytes) -> _T:
    """Run a cryptography loader with exactly the serial-number-0 deprecation warning silenced.

    AMD signs every VCEK and VLEK with serial 0 (see the module docstring). Only this warning is
    filtered, by message and category; any other warning still surfaces.
    """
    with _LOAD_LOCK, warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=_SERIAL_ZERO_WARNING, category=CryptographyDeprecationWarning
        )
        try:
            return load(data)
        except _CERT_DECODE_ERRORS as exc:
            raise InputError(f"malformed AMD certificate: {exc}") from exc


def _force_parse(cert: x509.Certificate) -> x509.Certificate:
    """Decode now every part the verifier reads later.

    ``cryptography`` parses names, extensions and keys lazily and raises ``ValueError`` on first
    access; doing it here turns a malformed certificate into one ``InputError`` at load time
    instead of an untyped error deep inside chain checks.
    """
    try:
        _ = (cert.subject, cert.issuer, cert.extensions, cert.signature_algorithm_oid)
        _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.tbs_certificate_bytes)
        cert.public_key()
    except _CERT_DECODE_ERRORS as exc:
        raise InputError(f"malformed AMD certificate: {exc}") from exc
    if not signature_bits_canonical(cert):
        raise InputError("malformed AMD certificate: signature BIT STRING is not DER")
    return cert


def load_amd_certificates(data: bytes) -> tuple[x509.Certificate, ...]:
    """Load AMD certificates from one input: a DER certificate or a PEM bundle (any order)."""
    if len(data) > MAX_AMD_CERT_INPUT_BYTES:
        raise InputError(
            f"certificate input is {len(data)} bytes; the limit is {MAX_AMD_CERT_INPUT_BYTES}"
        )
    if b"-----BEGIN CERTIFICATE-----" in data:
        count = data.count(b"-----BEGIN CERTIFICATE-----")
        if count > MAX_AMD_CERTS:
            raise InputError(f"{count} certificates in one input; the limit is {MAX_AMD_CERTS}")
        loaded = _tolerating_serial_zero(x509.load_pem_x509_certificates, data)
        return tuple(_force_parse(c) for c in loaded)
    return (_force_parse(_tolerating_serial_zero(x509.load_der_x509_certificate, data)),)


#: CN prefix of lessee's per-installation emulation CAs (agent/emulation/pki.py). The role is
#: read from the rest of the name; trust still comes only from a pinned ARK's hash or an ARK
#: the caller's policy named (``extra_arks``), so the prefix grants nothing by itself.
EMULATION_CN_PREFIX = "LESSEE EMULATION "


def classify(cert: x509.Certificate) -> tuple[CertRole, Product | None]:
    """Role and product of an AMD certificate from its subject CN; InputError if not AMD's."""
    name = describe(cert).removeprefix(EMULATION_CN_PREFIX)
    if name == "SEV-VCEK":
        return CertRole.VCEK, None
    if name == "SEV-VLEK":
        return CertRole.VLEK, None
    for product in Product:
        if name == f"SEV-{product.value}":
            return CertRole.ASK, product
        if name == f"SEV-VLEK-{product.value}":
            return CertRole.ASVK, product
        if name == f"ARK-{product.value}":
            return CertRole.ARK, product
    raise InputError(f"certificate '{name}' is not an AMD SEV-SNP certificate")


@_SmallCertMemo
def _sha256_der(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@cache
def pinned_chain(product: Product, kind: SigningKey) -> tuple[x509.Certificate, x509.Certificate]:
    """(intermediate, ARK) shipped for ``product`` and key ``kind``, checked against the pins."""
    name = _CHAIN_FILES.get((product, kind))
    if name is None:
        raise VerificationError(
            f"no {kind.value.upper()} intermediate is shipped for {product.value}; "
            "supply it with the certificates",
            reason="missing_certificate",
        )
    data = resources.files("attest.roots").joinpath("amd", name).read_bytes()
    intermediate, ark = x509.load_pem_x509_certificates(data)
    if _sha256_der(ark) != ARK_SHA256[product] or (
        _sha256_der(intermediate) != INTERMEDIATE_SHA256[(product, kind)]
    ):
        raise ChainError(
            f"package data {name} does not match the pinned hashes", reason="pinned_root_mismatch"
        )
    return intermediate, ark


def pinned_ark(product: Product) -> x509.Certificate:
    """The pinned AMD Root Key for ``product`` (the same ARK signs its ASK and its ASVK)."""
    return pinned_chain(product, SigningKey.VCEK)[1]


# --- DER helpers: only what the AMD extensions and the AlgorithmIdentifier need. ---


def _der_tlv(buf: bytes, pos: int, what: str) -> tuple[int, int, int]:
    """(tag, value start, value end) of the TLV at ``pos``; definite lengths up to 4 bytes."""
    if pos + 2 > len(buf):
        raise ParseError(f"{what}: truncated DER")
    tag, first = buf[pos], buf[pos + 1]
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or start + n > len(buf):
            raise ParseError(f"{what}: bad DER length")
        length = int.from_bytes(buf[start : start + n], "big")
        start += n
    if start + length > len(buf):
        raise ParseError(f"{what}: truncated DER")
    return tag, start, start + length


@_SmallCertMemo
def _check_amd_signature_algorithm(cert: x509.Certificate) -> None:
    """Outer and TBS signature AlgorithmIdentifiers must both be AMD's RSASSA-PSS/SHA-384."""
    der = cert.public_bytes(Encoding.DER)
    what = f"certificate '{describe(cert)}'"
    _, cert_start, _ = _der_tlv(der, 0, what)
    _, tbs_start, tbs_end = _der_tlv(der, cert_start, what)
    _, _, outer_end = _der_tlv(der, tbs_end, what)
    outer = der[tbs_end:outer_end]
    pos = tbs_start
    tag, _, end = _der_tlv(der, pos, what)
    if tag == 0xA0:  # [0] EXPLICIT version
        pos = end
    _, _, pos = _der_tlv(der, pos, what)  # serialNumber
    _, _, inner_end = _der_tlv(der, pos, what)
    inner = der[pos:inner_end]
    if outer not in AMD_PSS_SHA384_ALGIDS or inner != outer:
        raise ChainError(
            f"{what} is not signed with RSASSA-PSS/SHA-384/MGF1-SHA-384/salt 48",
            reason="cert_algorithm",
        )


def _ext_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ParseError(f"AMD extension {oid.dotted_string} has an unexpected type")
    return value.value


def _der_spl(raw: bytes, oid: x509.ObjectIdentifier) -> int:
    """A security patch level: a DER INTEGER, minimally encoded, in 0..255."""
    what = f"AMD extension {oid.dotted_string}"
    tag, start, end = _der_tlv(raw, 0, what)
    body = raw[start:end]
    if tag != 0x02 or end != len(raw) or not 1 <= len(body) <= 2:
        raise ParseError(f"{what}: not a small DER INTEGER", field=oid.dotted_string)
    if body[0] & 0x80 or (len(body) == 2 and (body[0] != 0 or body[1] < 0x80)):
        raise ParseError(f"{what}: negative or non-minimal INTEGER", field=oid.dotted_string)
    return int.from_bytes(body, "big")


@dataclass(frozen=True)
class AmdCertExtensions:
    """The AMD-specific facts a VCEK or VLEK certifies (parsed, not yet compared to a report)."""

    struct_version: int | None
    product_name: str
    product: Product | None
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None
    reserved_spls: tuple[int, ...]
    hwid: bytes | None
    csp_id: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "struct_version": self.struct_version,
            "product_name": self.product_name,
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
            "fmc": self.fmc,
            "hwid": None if self.hwid is None else self.hwid.hex(),
            "csp_id": self.csp_id,
        }


@_SmallCertMemo
def parse_amd_extensions(cert: x509.Certificate) -> AmdCertExtensions:
    """Read the AMD OIDs (1.3.6.1.4.1.3704.1.*) of a VCEK/VLEK strictly."""

    def optional_spl(oid: x509.ObjectIdentifier) -> int | None:
        raw = _ext_value(cert, oid)
        return None if raw is None else _der_spl(raw, oid)

    def spl(oid: x509.ObjectIdentifier) -> int:
        value = optional_spl(oid)
        if value is None:
            raise ParseError(
                f"'{describe(cert)}' lacks AMD extension {oid.dotted_string}",
                field=oid.dotted_string,
            )
        return value

    raw_name = _ext_value(cert, OID_PRODUCT_NAME)
    if raw_name is None:
        raise ParseError(f"'{describe(cert)}' lacks the AMD productName extension")
    tag, start, end = _der_tlv(raw_name, 0, "AMD productName")
    body = raw_name[start:end]
    if tag != 0x16 or end != len(raw_name) or not 0 < len(body) <= MAX_PRODUCT_NAME_LEN:
        raise ParseError("AMD productName is not a short IA5String", field="productName")
    if not all(0x20 < b < 0x7F for b in body):
        raise ParseError("AMD productName is not printable ASCII", field="productName")
    product_name = body.decode("ascii")
    family = product_name.split("-", 1)[0]
    product = next((p for p in Product if p.value == family), None)

    struct_raw = _ext_value(cert, OID_STRUCT_VERSION)
    csp_raw = _ext_value(cert, OID_CSP_ID)
    csp_id: str | None = None
    if csp_raw is not None:
        tag, start, end = _der_tlv(csp_raw, 0, "AMD csp_id")
        if tag not in (0x0C, 0x16) or end != len(csp_raw):  # UTF8String or IA5String
            raise ParseError("AMD csp_id is not a string", field="csp_id")
        csp_id = csp_raw[start:end].decode("utf-8", "replace")
    reserved = tuple(v for oid in OID_RESERVED_SPLS if (v := optional_spl(oid)) is not None)
    return AmdCertExtensions(
        struct_version=None if struct_raw is None else _der_spl(struct_raw, OID_STRUCT_VERSION),
        product_name=product_name,
        product=product,
        bootloader=spl(OID_BL_SPL),
        tee=spl(OID_TEE_SPL),
        snp=spl(OID_SNP_SPL),
        microcode=spl(OID_UCODE_SPL),
        fmc=optional_spl(OID_FMC_SPL),
        reserved_spls=reserved,
        hwid=_ext_value(cert, OID_HWID),
        csp_id=csp_id,
    )


def check_extensions_match_report(
    ext: AmdCertExtensions, report: AttestationReport, product: Product, kind: SigningKey
) -> tuple[TcbVersion, bool]:
    """Steps 8 and 9: TCB extensions == REPORTED_TCB; hwID vs CHIP_ID. Returns (tcb, chip checked).

    The VCEK is derived from the chip secret *and* the TCB, so a VCEK for another TCB or another
    chip must not vouch for this report even if the host hands one over.
    """
    tcb = report.tcb("reported", product)
    pairs: list[tuple[str, int | None, int | None]] = [
        ("bootloader", ext.bootloader, tcb.bootloader),
        ("tee", ext.tee, tcb.tee),
        ("snp", ext.snp, tcb.snp),
        ("microcode", ext.microcode, tcb.microcode),
        ("fmc", ext.fmc, tcb.fmc),
    ]
    pairs += [(f"reserved SPL {i}", v, 0) for i, v in enumerate(ext.reserved_spls)]
    for name, cert_value, report_value in pairs:
        if cert_value != report_value:
            raise VerificationError(
                f"{kind.value.upper()} certifies {name} SPL {cert_value}, "
                f"REPORTED_TCB has {report_value}",
                reason="tcb_mismatch",
            )
    if kind is not SigningKey.VCEK:
        return tcb, False
    if report.key_info.mask_chip_id:
        return tcb, False
    if ext.hwid is None:
        raise VerificationError("the VCEK has no hwID extension", reason="chip_id_mismatch")
    if product is Product.TURIN:
        ok = (
            len(ext.hwid) == TURIN_HWID_BYTES
            and report.chip_id[:TURIN_HWID_BYTES] == ext.hwid
            and not any(report.chip_id[TURIN_HWID_BYTES:])
        )
    else:
        ok = len(ext.hwid) == HWID_BYTES and report.chip_id == ext.hwid
    if not ok:
        raise VerificationError(
            "the VCEK's hwID does not match the report's CHIP_ID", reason="chip_id_mismatch"
        )
    return tcb, True


def _require_crl_size(crl_data: bytes) -> None:
    if len(crl_data) > MAX_CRL_BYTES:
        raise InputError(f"CRL is {len(crl_data)} bytes; the limit is {MAX_CRL_BYTES}")


def _load_crl(data: bytes, what: str) -> x509.CertificateRevocationList:
    """A bounded CRL, DER or PEM; ``InputError`` (its text after ``what``) for anything else."""
    _require_crl_size(data)
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            crl = x509.load_pem_x509_crl(data)
            der = crl.public_bytes(Encoding.DER)
        else:
            crl = x509.load_der_x509_crl(data)
            der = data
        # cryptography decodes these lazily: a damaged name, date, extension or revoked entry
        # would otherwise raise a bare ValueError later, inside a check (found by hypothesis).
        _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.extensions)
        _ = (crl.signature_hash_algorithm, [(r.serial_number, r.extensions) for r in crl])
    except _CERT_DECODE_ERRORS as exc:  # InvalidVersion too: a bad version is not a ValueError
        raise InputError(f"{what}malformed CRL: {exc}") from exc
    if not signed_der_canonical(der):  # the exact bytes are archived and cache keys
        raise InputError(f"{what}malformed CRL: signature BIT STRING is not DER (unused bits)")
    return crl


def verify_amd_crl_signature(
    crl_data: bytes, ark: x509.Certificate
) -> x509.CertificateRevocationList:
    """The CRL (DER or PEM, bounded) if ``ark`` issued and signed it as AMD signs its CRLs
    (RSASSA-PSS/SHA-384); ``RevocationError`` otherwise. Its dates are the caller's to check."""
    crl = _load_crl(crl_data, "")
    if crl.issuer != ark.subject:
        raise RevocationError(f"CRL issuer is not '{describe(ark)}'", reason="crl_issuer")
    if crl.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
        crl.signature_hash_algorithm, hashes.SHA384
    ):
        raise RevocationError(
            "CRL is not signed with RSASSA-PSS/SHA-384", reason="crl_bad_signature"
        )
    ark_key = ark.public_key()
    if not isinstance(ark_key, rsa.RSAPublicKey) or not crl.is_signature_valid(ark_key):
        raise RevocationError(
            "CRL signature does not verify with the ARK", reason="crl_bad_signature"
        )
    return crl


def _check_amd_crl(
    crl_data: bytes, *, ark: x509.Certificate, intermediate: x509.Certificate, at: datetime
) -> tuple[datetime, datetime]:
    """``check_amd_crl``, returning the window (lastUpdate, nextUpdate) in which it passes.

    Only the window depends on ``at``: issuer, algorithm, signature and the revoked list depend
    on the bytes alone, which is what lets ``AmdCrlCache`` answer from the window.
    """
    at = require_aware(at)
    crl = verify_amd_crl_signature(crl_data, ark)
    last_update = crl.last_update_utc
    next_update = crl.next_update_utc
    if at < last_update:
        raise RevocationError(
            f"CRL is not valid before {last_update.isoformat()}", reason="crl_not_yet_valid"
        )
    if next_update is None or at > next_update:
        raise RevocationError(
            f"CRL is stale (next update {next_update.isoformat() if next_update else 'absent'})",
            reason="crl_stale",
        )
    if crl.get_revoked_certificate_by_serial_number(intermediate.serial_number) is not None:
        raise RevocationError(
            f"'{describe(intermediate)}' is revoked by AMD's CRL", reason="revoked"
        )
    return last_update, next_update


def check_amd_crl(
    crl_data: bytes, *, ark: x509.Certificate, intermediate: x509.Certificate, at: datetime
) -> None:
    """Step 10: AMD's CRL (DER or PEM) is signed by the ARK, current at ``at``, and does not list
    the intermediate. AMD's CRLs revoke ASKs/ASVKs by serial; VCEKs all have serial 0 and are
    not revocable this way (AMD revokes a TCB by publishing a new one instead).
    """
    _check_amd_crl(crl_data, ark=ark, intermediate=intermediate, at=at)


def held_crl_name(kind: SigningKey, product: Product) -> str:
    """The name of a verifier-held AMD CRL: ``<kind>-<product>`` (``vcek-Milan``,
    ``vlek-Genoa``), the two path parts of its KDS address
    (``https://kdsintf.amd.com/<kind>/v1/<product>/crl``)."""
    return f"{kind.value}-{product.value}"


def parse_held_crl_name(name: str) -> tuple[SigningKey, Product] | None:
    """The (kind, product) a ``held_crl_name`` names, or None for any other text."""
    kind_text, sep, product_text = name.partition("-")
    if not sep:
        return None
    kind = next((k for k in (SigningKey.VCEK, SigningKey.VLEK) if k.value == kind_text), None)
    product = next((p for p in Product if p.value == product_text), None)
    return None if kind is None or product is None else (kind, product)


def load_held_crl(data: bytes, kind: SigningKey, product: Product) -> bytes:
    """Check that ``data`` (DER or PEM) can be the AMD CRL held for ``kind`` and ``product``:
    bounded, well formed, issued by ``ARK-<product>``. Returns the bytes.

    What can be checked without a report: the signature, the freshness (a CRL without a
    nextUpdate is never current) and the revoked list are checked per report (step 10) against
    the chain's ARK as of the report's time, since a held CRL outlives its nextUpdate unless
    refreshed and must then fail, never pass. Which *kind* of list it is cannot be read from a
    CRL at all: the operator names it.
    """
    crl = _load_crl(data, f"{held_crl_name(kind, product)}: ")
    names = crl.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = names[0].value if len(names) == 1 else None
    if not isinstance(issuer, str) or issuer.removeprefix(EMULATION_CN_PREFIX) != (
        f"ARK-{product.value}"
    ):
        raise InputError(
            f"{held_crl_name(kind, product)}: CRL issuer is {issuer!r}, not 'ARK-{product.value}'"
        )
    return bytes(data)


def held_crl_dates(data: bytes) -> tuple[datetime, datetime | None]:
    """(thisUpdate, nextUpdate) of a held CRL already accepted by ``load_held_crl``. A reload
    compares thisUpdate so that it never replaces a list with an older one (a rollback to a
    list made before an ASK or ASVK was revoked); the broker logs both."""
    crl = _load_crl(data, "")
    return crl.last_update_utc, crl.next_update_utc


#: CRL verdicts an ``AmdCrlCache`` keeps: one per product (ARK) and intermediate for each CRL
#: AMD publishes while a broker runs; the bound keeps memory finite, it never changes an answer.
MAX_CACHED_CRLS = 64


class AmdCrlCache:
    """Remembers CRLs that passed ``check_amd_crl``, with the window in which they pass.

    A broker sees the same CRL in every bundle of a host until AMD publishes the next one; each
    check is a parse plus an RSA-4096 PSS verification (~0.1 ms). An entry is keyed by the
    SHA-256 of the CRL's exact bytes, of the ARK's DER and of the intermediate's DER, and holds
    (lastUpdate, nextUpdate): everything else the check looks at depends only on those bytes,
    so a hit (``lastUpdate <= at <= nextUpdate``) is exactly what a fresh check would answer at
    ``at``. Outside the window the full check runs again (and raises as it would). Failures are
    never kept. Bounded (least recently used out first) and thread-safe; ``hits``/``misses``
    count lookups.
    """

    def __init__(self, max_entries: int = MAX_CACHED_CRLS) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, tuple[datetime, datetime]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def check(
        self,
        crl_data: bytes,
        *,
        ark: x509.Certificate,
        intermediate: x509.Certificate,
        at: datetime,
    ) -> None:
        """``check_amd_crl(crl_data, ark=ark, intermediate=intermediate, at=at)``, remembered."""
        at = require_aware(at)
        _require_crl_size(crl_data)  # before hashing: an oversize input is refused, not hashed
        key = b"".join(
            (
                hashlib.sha256(crl_data).digest(),
                bytes.fromhex(_sha256_der(ark)),
                bytes.fromhex(_sha256_der(intermediate)),
            )
        )
        with self._lock:
            window = self._entries.get(key)
            if window is not None:
                self._entries.move_to_end(key)
                if window[0] <= at <= window[1]:
                    self.hits += 1
                    return
            self.misses += 1
        window = _check_amd_crl(crl_data, ark=ark, intermediate=intermediate, at=at)
        with self._lock:
            self._entries[key] = window
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass(frozen=True)
class VerifiedSnpReport:
    """A report whose signature chains to a pinned AMD ARK and whose VCEK/VLEK matches it.

    ``tcb`` is REPORTED_TCB decoded with ``product``'s layout (equal to the leaf's extensions);
    ``launch_tcb`` is LAUNCH_TCB, the TCB the guest was launched under (lower than REPORTED_TCB
    after a live firmware update). Policy (DEBUG, minimum TCB, measurement, VMPL) is not judged
    here: appraisal does that.
    """

    report: AttestationReport
    product: Product
    signing_key_kind: SigningKey
    chain: VerifiedChain
    tcb: TcbVersion
    extensions: AmdCertExtensions
    chip_id_checked: bool
    revocation_checked: bool
    launch_tcb: TcbVersion | None = None


def verify_snp_report(
    report: AttestationReport | bytes,
    certs: Sequence[x509.Certificate],
    *,
    at: datetime,
    crl: bytes | None = None,
    report_data: bytes | None = None,
    cache: ChainCache | None = None,
    crl_cache: AmdCrlCache | None = None,
    extra_arks: Sequence[x509.Certificate] = (),
    held_crls: Mapping[tuple[SigningKey, Product], bytes] | None = None,
) -> VerifiedSnpReport:
    """Run checks 1-11 (module docstring) as of ``at``; raise on the first failure.

    ``certs``: the VCEK or VLEK, optionally its ASK/ASVK and the ARK (load them with
    ``load_amd_certificates``). Every supplied certificate must take part in the chain.
    ``extra_arks``: roots trusted besides AMD's pinned ARKs (the caller's policy named them,
    e.g. lessee's per-installation emulation root); a supplied ARK equal to one is used.
    ``cache`` / ``crl_cache`` remember verified chains and CRL verdicts (a broker's context);
    either gives exactly the answer of the uncached check.
    ``held_crls``: AMD CRLs the verifier's operator fetched itself, by (signing key kind,
    product): the VCEK list (revoked ASKs) and the VLEK list (revoked ASVKs) are both signed by
    the product's ARK and cannot be told apart by their content, so only a CRL chosen by the
    verifier for the report's own key kind is the *right* list. One held for this report's
    (kind, product) is checked instead of ``crl`` (the evidence's, chosen by the host).
    """
    at = require_aware(at)
    # 1. Parse; an unsigned report proves nothing.
    if not isinstance(report, AttestationReport):
        report = parse_report(report)
    kind = report.signing_key
    if kind is SigningKey.NONE:
        raise VerificationError("the report is unsigned (SIGNING_KEY = none)", reason="unsigned")

    # 2. Sort the supplied certificates by role.
    by_role: dict[CertRole, list[tuple[x509.Certificate, Product | None]]] = {
        r: [] for r in CertRole
    }
    for cert in certs:
        role, prod = classify(cert)
        by_role[role].append((cert, prod))
    leaf_role = CertRole.VCEK if kind is SigningKey.VCEK else CertRole.VLEK
    other_leaf = CertRole.VLEK if leaf_role is CertRole.VCEK else CertRole.VCEK
    if not by_role[leaf_role]:
        if by_role[other_leaf]:
            raise VerificationError(
                f"the report is signed by a {kind.value.upper()} but a "
                f"{other_leaf.value.upper()} certificate was supplied",
                reason="signing_key_mismatch",
            )
        raise VerificationError(
            f"no {kind.value.upper()} certificate supplied", reason="missing_certificate"
        )
    if len(by_role[leaf_role]) > 1 or by_role[other_leaf]:
        raise ChainError("more than one VCEK/VLEK supplied", reason="unexpected_certificate")
    leaf = by_role[leaf_role][0][0]

    # 3. Product: named by the leaf, and by the signed CPUID when the report has one.
    ext = parse_amd_extensions(leaf)
    product = ext.product
    if product is None:
        raise VerificationError(
            f"unknown AMD product '{ext.product_name}'", reason="unknown_product"
        )
    if report.cpuid_product is not None and report.cpuid_product is not product:
        raise VerificationError(
            f"the report's CPUID names {report.cpuid_product.value}, the "
            f"{kind.value.upper()} names {product.value}",
            reason="product_mismatch",
        )

    # 4. Roots: the pinned ARK of this product; supplied ARKs must be it.
    ark_pin = ARK_SHA256[product]
    extra = {_sha256_der(c): c for c in extra_arks}
    supplied_extra = None
    for cert, _ in by_role[CertRole.ARK]:
        digest = _sha256_der(cert)  # memoised, but each lookup hashes the DER: once per cert
        if digest in extra:
            supplied_extra = extra[digest]
        elif digest != ark_pin:
            raise ChainError(
                f"supplied root '{describe(cert)}' is not the pinned ARK for {product.value}",
                reason="untrusted_root",
            )
    inter_role = CertRole.ASK if kind is SigningKey.VCEK else CertRole.ASVK
    wrong = [c for r in (CertRole.ASK, CertRole.ASVK) if r is not inter_role for c, _ in by_role[r]]
    if wrong or len(by_role[inter_role]) > 1:
        raise ChainError(
            f"unexpected intermediate certificate(s) for a {kind.value.upper()}",
            reason="unexpected_certificate",
        )
    if by_role[inter_role]:
        intermediate = by_role[inter_role][0][0]
        ark = supplied_extra if supplied_extra is not None else pinned_ark(product)
    else:
        intermediate, ark = pinned_chain(product, kind)

    # 5. AMD's signature algorithm, exactly.
    for cert in (leaf, intermediate):
        _check_amd_signature_algorithm(cert)

    # 6. The chain to the pinned ARK, as of `at`.
    chain_certs = (leaf, intermediate)
    chain = (
        cache.verify(chain_certs, root=ark, at=at, expected_length=2, what="AMD chain")
        if cache is not None
        else verify_chain(chain_certs, root=ark, at=at, expected_length=2, what="AMD chain")
    )

    # 7. The report signature.
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError(f"'{describe(leaf)}' does not hold a P-384 key", reason="key_type")
    try:
        key.verify(
            encode_dss_signature(report.signature_r, report.signature_s),
            report.signed_bytes,
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature:
        raise VerificationError(
            f"report signature does not verify with '{describe(leaf)}'", reason="bad_signature"
        ) from None

    # 8-9. The leaf certifies this TCB and (VCEK) this chip.
    tcb, chip_checked = check_extensions_match_report(ext, report, product, kind)
    # The other three TCB fields, decoded with the product's layout now that it is known (a
    # version-2 report does not say it): their reserved bytes must be zero, as for version 3+
    # reports the parser checks, and LAUNCH_TCB is appraised (``attest.appraise.snp``).
    launch_tcb = report.tcb("launch", product)
    report.tcb("current", product)
    report.tcb("committed", product)

    # 10. Revocation, when AMD's CRL is given: the verifier's own list for this key kind and
    # product when it holds one, else the evidence's.
    held = held_crls.get((kind, product)) if held_crls else None
    if held is not None:
        crl = held
    if crl is not None:
        if crl_cache is not None:
            crl_cache.check(crl, ark=ark, intermediate=intermediate, at=at)
        else:
            check_amd_crl(crl, ark=ark, intermediate=intermediate, at=at)

    # 11. The session binding, when the caller knows it.
    if report_data is not None:
        if len(report_data) != len(report.report_data):
            raise InputError(
                f"expected report data must be {len(report.report_data)} bytes, "
                f"got {len(report_data)}"
            )
        if not hmac.compare_digest(report_data, report.report_data):
            raise VerificationError(
                "REPORT_DATA does not equal the expected value", reason="report_data_mismatch"
            )

    return VerifiedSnpReport(
        report=report,
        product=product,
        signing_key_kind=kind,
        chain=chain,
        tcb=tcb,
        extensions=ext,
        chip_id_checked=chip_checked,
        revocation_checked=crl is not None,
        launch_tcb=launch_tcb,
    )
