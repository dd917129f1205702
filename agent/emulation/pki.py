"""The emulation PKI: per-installation roots for emulated GPUs, RIMs and SEV-SNP.

Machines without confidential-computing hardware still run the whole flow on emulated evidence
(``agent.emulation.gpu`` / ``snp``). That evidence must be signed by *something*; this module
makes that something, once per installation, in a directory of its own:

* NVIDIA-shaped GPU device chain: root (P-384, self-signed) -> Identity -> Provisioner ICA ->
  BROM -> FMC LF leaf, five certificates as on a Hopper GPU, one BROM + leaf per emulated GPU;
  the leaf carries the FWID extension 2.23.133.5.4.1 in the exact DER shape NVIDIA uses;
* NVIDIA-shaped RIM signing PKI, the shape of the chains in NVIDIA's own RIMs: root ->
  Reference Value GH100 CA -> Reference Value L3 GH100 001 (pathLen 0) -> one leaf signer per
  RIM kind (driver, VBIOS: own key and serial, same name, as NVIDIA's two HCC RIM L4 Signers),
  P-384 throughout, so a RIM embeds signer, L3, CA, root as NVIDIA's do;
* AMD-shaped SEV-SNP chain: ARK (RSA-4096, RSASSA-PSS/SHA-384, self-signed) -> ASK -> VCEK
  (P-384, serial 0, AMD's TCB / productName / hwID extensions). The VCEK is derived from a
  per-installation chip secret and the TCB, as AMD derives it from the chip's fused secret;
* issuer-signed OCSP responses for any certificate of these chains (``ocsp_response``);
* AMD-shaped CRLs signed by the emulated ARK (``amd_crl``), current at the time asked for.

Why per installation and never committed: a private key in a repository is a key anyone can use,
and evidence signed by it would be indistinguishable from the emulation on every machine. Here
each installation's keys exist only in its own directory (files 0600, directory 0700), so
trusting "the emulation" always means trusting *one* installation, named by its root
fingerprints (``root_fingerprints``), which a policy must list explicitly in
``roots.extra_trusted_sha256``; no default policy does.

Why clearly named: every subject carries ``O=LESSEE EMULATION`` and a warning OU, and every CA's
common name starts with ``LESSEE EMULATION``. The two device-key leaves keep the vendor's fixed
leaf names (``GH100 A01 GSP FMC LF``, ``SEV-VCEK``) because the verifiers read the device kind
from them, exactly as NVIDIA's and AMD's own verifiers do; no CA is named like a vendor's CA.

Generation is atomic (a temporary sibling directory renamed into place) so a crash or a second
process never leaves a half-made PKI; loading checks file modes, that each key matches its
certificate, and the root fingerprints recorded at creation. Everything here raises
``EmulationPkiError`` (an ``InputError``) on a bad directory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from attest.errors import InputError
from attest.jsonutil import load_json
from attest.snp.verify import load_amd_certificates
from attest.timeutil import require_aware

# --------------------------------------------------------------------------------------------
# Names and bounds
# --------------------------------------------------------------------------------------------

#: Organisation of every emulation subject, and the prefix of every emulation CA's common name.
EMULATION_LABEL = "LESSEE EMULATION"
#: Organisational unit of every emulation subject (X.520 caps OU at 64 characters).
EMULATION_NOTICE = "LESSEE EMULATION: not a hardware vendor certificate"
#: OCSP URL written into the chains, in the reserved ``.invalid`` TLD (RFC 2606): it keeps the
#: vendors' certificate shape without pointing at any host; revocation data is stapled.
EMULATION_OCSP_URL = "http://ocsp.emulation.lessee.invalid"

#: Layout version of the PKI directory (``manifest.json``); a different one is refused.
#: Version 1 had a 3-certificate RIM chain with one signer for both RIM kinds; version 2 has
#: NVIDIA's 4-level RIM PKI. A version-1 directory is refused with a message to recreate it (its
#: RIM root could be kept only by writing new keys into a loaded directory in place, which the
#: atomic create/rename scheme exists to avoid; an emulation PKI is cheap to recreate).
PKI_FORMAT = "lessee-emulation-pki"
PKI_FORMAT_VERSION = 2
#: GPUs with their own BROM + leaf: one HGX board holds 8, the largest CC set NVIDIA ships.
MAX_EMULATED_GPUS = 8
#: No file of the PKI directory is larger than this (an RSA-4096 key PEM is ~3.3 KiB); a larger
#: one is refused before it is read.
MAX_PKI_FILE_BYTES = 64 * 1024
#: The per-installation chip secret from which CHIP_ID and every VCEK key are derived.
CHIP_SECRET_BYTES = 64
#: AMD's hwID is the 64-byte CHIP_ID on Milan.
CHIP_ID_BYTES = 64
#: Order of the P-384 group: VCEK scalars are reduced into [1, n-1].
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)
#: SHA-384 digest length: the FWID and every NVIDIA measurement.
FWID_BYTES = 48

#: NVIDIA device certificates are valid until the end of time (notAfter 9999-12-31 23:59:59).
DEVICE_NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
#: Roots and CAs outlive any installation's use of them.
CA_VALIDITY = timedelta(days=30 * 365)
#: NVIDIA's RIM signers live 2 years; an installation's emulation must keep working longer
#: than that without regeneration, so the emulated signers get 10.
RIM_SIGNER_VALIDITY = timedelta(days=10 * 365)
#: Common name of both leaf signers: NVIDIA names both of its leaves ``HCC RIM L4 Signer`` and
#: tells them apart by key and serial only; the emulation does the same, with its prefix.
RIM_SIGNER_ROLE = "HCC RIM L4 Signer"
#: AMD's ARK/ASK live 25 years, a VCEK 7.
AMD_CA_VALIDITY = timedelta(days=25 * 365)
VCEK_VALIDITY = timedelta(days=7 * 365)
#: notBefore is backdated this much so that verifiers with a slightly slow clock accept it.
BACKDATE = timedelta(days=1)
#: How long a stapled emulated OCSP answer stays current (NVIDIA's responder: about a day).
OCSP_VALIDITY = timedelta(days=1)

#: An emulated AMD CRL's lastUpdate lies this far before the time it is made for (verifiers
#: with a slightly slow clock still accept it), its nextUpdate this far after: AMD's KDS
#: republishes its CRLs, and the emulation makes a new one whenever the old one is near its end.
AMD_CRL_BACKDATE = timedelta(hours=1)
AMD_CRL_VALIDITY = timedelta(days=7)
#: The remembered CRL is reused while at least this much of it is left (so a stapled CRL never
#: goes stale between collection and appraisal), and re-signed otherwise.
AMD_CRL_MIN_REMAINING = timedelta(days=1)
#: Serials one emulated CRL may list (tests revoke the ASK; AMD's list a handful).
MAX_AMD_CRL_REVOKED = 16

#: RSA size of AMD's ARK and ASK.
AMD_RSA_BITS = 4096
#: AMD signs every certificate with RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48.
_AMD_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
#: A P-384 RSA-4096 signature is always this long (the serial-0 rewrite relies on it).
_RSA4096_SIGNATURE_BYTES = AMD_RSA_BITS // 8

#: NVIDIA's FWID extension (TCG DICE arc) and its SHA-384 OID, DER-encoded.
OID_NVIDIA_FWID = x509.ObjectIdentifier("2.23.133.5.4.1")
_SHA384_OID_DER = bytes.fromhex("0609608648016503040202")
#: NVIDIA's subjectAltName otherName type on device leaves.
OID_NVIDIA_SAN = x509.ObjectIdentifier("1.3.6.1.4.1.412.274.1")

# AMD VCEK extensions (AMD "Versioned Chip Endorsement Key" spec, table 8).
_AMD = "1.3.6.1.4.1.3704.1"
OID_AMD_STRUCT_VERSION = x509.ObjectIdentifier(f"{_AMD}.1")
OID_AMD_PRODUCT_NAME = x509.ObjectIdentifier(f"{_AMD}.2")
OID_AMD_BL_SPL = x509.ObjectIdentifier(f"{_AMD}.3.1")
OID_AMD_TEE_SPL = x509.ObjectIdentifier(f"{_AMD}.3.2")
OID_AMD_SNP_SPL = x509.ObjectIdentifier(f"{_AMD}.3.3")
OID_AMD_UCODE_SPL = x509.ObjectIdentifier(f"{_AMD}.3.8")
OID_AMD_HWID = x509.ObjectIdentifier(f"{_AMD}.4")
#: The product AMD's Milan VCEKs name (the part after '-' is the stepping).
AMD_PRODUCT_NAME = "Milan-B0"

_FWID_LABEL = b"LESSEE EMULATION GSP FMC firmware"

K = TypeVar("K", ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)


class EmulationPkiError(InputError):
    """The emulation PKI directory is missing, corrupt, unsafe, or of another format."""


@dataclass(frozen=True)
class Issued(Generic[K]):
    """A certificate and the private key it certifies (the key never appears in a repr)."""

    cert: x509.Certificate
    key: K = field(repr=False)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(Encoding.PEM)

    @property
    def sha256(self) -> str:
        """SHA-256 of the DER certificate, hex: how policies name a trusted root."""
        return hashlib.sha256(self.der).hexdigest()


@dataclass(frozen=True)
class GpuIdentity:
    """One emulated GPU's own certificates: its BROM (device CA) and its FMC attestation leaf."""

    index: int
    brom: Issued[ec.EllipticCurvePrivateKey]
    leaf: Issued[ec.EllipticCurvePrivateKey]


@dataclass(frozen=True)
class SnpTcb:
    """The TCB a VCEK certifies and a report states (Milan/Genoa layout, ABI table 3).

    Raw form: ``[BOOT_LOADER, TEE, 0, 0, 0, 0, SNP, MICROCODE]``.
    """

    bootloader: int = 3
    tee: int = 0
    snp: int = 8
    microcode: int = 115

    def __post_init__(self) -> None:
        for name in ("bootloader", "tee", "snp", "microcode"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 0xFF:
                raise InputError(f"TCB {name} must be 0..255, got {value!r}")

    @property
    def raw(self) -> bytes:
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])


# --------------------------------------------------------------------------------------------
# DER and certificate helpers
# --------------------------------------------------------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV with a minimal definite length (contents here are below 64 KiB)."""
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    elif n < 0x100:
        length = b"\x81" + bytes([n])
    else:
        length = b"\x82" + n.to_bytes(2, "big")
    return bytes([tag]) + length + content


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER TLV at ``pos`` (our own output only)."""
    tag, first = buf[pos], buf[pos + 1]
    start = pos + 2
    if first < 0x80:
        return tag, start, start + first
    n = first & 0x7F
    length = int.from_bytes(buf[start : start + n], "big")
    return tag, start + n, start + n + length


def fwid_extension_value(issuer_key: ec.EllipticCurvePublicKey, fwid: bytes) -> bytes:
    """The Hopper FWID extension, byte for byte in NVIDIA's shape.

    ``SEQUENCE { INTEGER 1, SubjectPublicKeyInfo (the BROM's key), SEQUENCE { OID sha384,
    OCTET STRING fwid } }``: the FWID is the last 48 bytes, which is how NVIDIA's verifier reads
    it (NVIDIA-EVIDENCE.md §3).
    """
    if len(fwid) != FWID_BYTES:
        raise InputError(f"an FWID is {FWID_BYTES} bytes, got {len(fwid)}")
    spki = issuer_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    digest = _der(0x30, _SHA384_OID_DER + _der(0x04, fwid))
    return _der(0x30, _der(0x02, b"\x01") + spki + digest)


def emulated_fwid() -> bytes:
    """The FWID of the emulated GSP FMC firmware: SHA-384 of a fixed label.

    An FWID is the hash of the firmware that made the attestation key, so GPUs running the same
    firmware share it; every emulated GPU runs the same (imaginary) firmware.
    """
    return hashlib.sha384(_FWID_LABEL).digest()


def _name(common_name: str, *, serial: str | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, EMULATION_LABEL),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, EMULATION_NOTICE),
    ]
    if serial is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


def _ca_name(role: str) -> x509.Name:
    return _name(f"{EMULATION_LABEL} {role}")


def _p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _ski(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ocsp_aia() -> x509.AuthorityInformationAccess:
    return x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP,
                x509.UniformResourceIdentifier(EMULATION_OCSP_URL),
            )
        ]
    )


def _key_usage(*, sign: bool = False, cert: bool = False, crl: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert,
        crl_sign=crl,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    not_before: datetime,
    not_after: datetime,
    serial: int | None = None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _nvidia_ca(
    role: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Issued[ec.EllipticCurvePrivateKey] | None,
    *,
    now: datetime,
    not_after: datetime,
    path_length: int | None = None,
    crl_sign: bool = True,
    aia: bool = True,
    subject: x509.Name | None = None,
) -> Issued[ec.EllipticCurvePrivateKey]:
    """A P-384 CA in NVIDIA's shape (critical basicConstraints and keyUsage, SKI, AKI)."""
    name = subject if subject is not None else _ca_name(role)
    issuer_name = issuer.cert.subject if issuer is not None else name
    signer = issuer.key if issuer is not None else key
    b = _builder(
        name, issuer_name, key.public_key(), not_before=now - BACKDATE, not_after=not_after
    )
    b = b.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
    b = b.add_extension(_key_usage(cert=True, crl=crl_sign), critical=True)
    if aia and issuer is not None:
        b = b.add_extension(_ocsp_aia(), critical=False)
    b = b.add_extension(_ski(key.public_key()), critical=False)
    aki = (
        _aki(issuer.cert)
        if issuer is not None
        else x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    )
    b = b.add_extension(aki, critical=False)
    return Issued(b.sign(signer, hashes.SHA384()), key)


def _gpu_identity(
    index: int,
    provisioner: Issued[ec.EllipticCurvePrivateKey],
    *,
    now: datetime,
) -> GpuIdentity:
    """BROM (per-GPU device CA) and FMC LF leaf, in the shape of the Hopper sample chain."""
    brom_key, leaf_key = _p384(), _p384()
    device_id = secrets.token_hex(9).upper()  # NVIDIA's BROM serialNumber: 9 bytes of hex
    brom_subject = _name(f"{EMULATION_LABEL} GH100 A01 GSP BROM", serial=device_id)
    brom = _nvidia_ca(
        "GH100 A01 GSP BROM",
        brom_key,
        provisioner,
        now=now,
        not_after=DEVICE_NOT_AFTER,
        crl_sign=False,
        aia=False,
        subject=brom_subject,
    )
    serial = x509.random_serial_number()
    leaf_subject = _name("GH100 A01 GSP FMC LF", serial=f"{serial:040X}")
    san_text = f"LESSEE-EMULATION:GH100:{device_id[:16]}".encode()
    b = _builder(
        leaf_subject,
        brom.cert.subject,
        leaf_key.public_key(),
        not_before=now - BACKDATE,
        not_after=DEVICE_NOT_AFTER,
        serial=serial,
    )
    b = b.add_extension(_key_usage(sign=True), critical=True)
    b = b.add_extension(_ski(leaf_key.public_key()), critical=False)
    b = b.add_extension(_aki(brom.cert), critical=False)
    b = b.add_extension(
        x509.SubjectAlternativeName([x509.OtherName(OID_NVIDIA_SAN, _der(0x0C, san_text))]),
        critical=False,
    )
    fwid = fwid_extension_value(brom_key.public_key(), emulated_fwid())
    b = b.add_extension(x509.UnrecognizedExtension(OID_NVIDIA_FWID, fwid), critical=False)
    leaf = Issued(b.sign(brom_key, hashes.SHA384()), leaf_key)
    return GpuIdentity(index=index, brom=brom, leaf=leaf)


def _rim_signer(
    ca: Issued[ec.EllipticCurvePrivateKey], *, now: datetime
) -> Issued[ec.EllipticCurvePrivateKey]:
    """A RIM leaf signer in the shape of NVIDIA's HCC RIM L4 Signer (end entity, signing only)."""
    key = _p384()
    b = _builder(
        _ca_name(RIM_SIGNER_ROLE),
        ca.cert.subject,
        key.public_key(),
        not_before=now - BACKDATE,
        not_after=now + RIM_SIGNER_VALIDITY,
    )
    b = b.add_extension(_ski(key.public_key()), critical=False)
    b = b.add_extension(_aki(ca.cert), critical=False)
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    b = b.add_extension(_key_usage(sign=True), critical=True)
    b = b.add_extension(_ocsp_aia(), critical=False)
    return Issued(b.sign(ca.key, hashes.SHA384()), key)


def _amd_ca(
    role: str,
    key: rsa.RSAPrivateKey,
    issuer: Issued[rsa.RSAPrivateKey] | None,
    *,
    now: datetime,
    serial: int,
) -> Issued[rsa.RSAPrivateKey]:
    """ARK (issuer None) or ASK in AMD's shape: RSA-4096, RSASSA-PSS/SHA-384 signatures."""
    name = _ca_name(role)
    issuer_name = issuer.cert.subject if issuer is not None else name
    signer = issuer.key if issuer is not None else key
    b = _builder(
        name,
        issuer_name,
        key.public_key(),
        not_before=now - BACKDATE,
        not_after=now + AMD_CA_VALIDITY,
        serial=serial,
    )
    b = b.add_extension(_ski(key.public_key()), critical=False)
    if issuer is not None:
        b = b.add_extension(_aki(issuer.cert), critical=False)
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        b = b.add_extension(_key_usage(cert=True), critical=True)
    else:
        b = b.add_extension(_key_usage(cert=True, crl=True), critical=True)
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return Issued(b.sign(signer, hashes.SHA384(), rsa_padding=_AMD_PSS), key)


def _with_serial_zero(cert: x509.Certificate, issuer_key: rsa.RSAPrivateKey) -> x509.Certificate:
    """Re-sign ``cert`` (made with serial 1) with serial number 0, as AMD issues VCEKs.

    ``cryptography`` refuses to build a certificate with serial 0 (RFC 5280 forbids it), but
    AMD's VCEKs all carry it, and the emulation must look like them. The TBS serial INTEGER
    ``02 01 01`` becomes ``02 01 00`` (same length), the TBS is signed again with AMD's PSS
    parameters, and the 512-byte signature is replaced in place (RSA-4096 signatures have a fixed
    length, so no outer length changes).
    """
    der = cert.public_bytes(Encoding.DER)
    _, cert_start, _ = _tlv(der, 0)
    _, tbs_start, tbs_end = _tlv(der, cert_start)
    tag, _, version_end = _tlv(der, tbs_start)
    if tag != 0xA0:  # pragma: no cover - cryptography always writes a v3 version
        raise EmulationPkiError("unexpected TBS layout while writing the VCEK")
    tag, serial_start, serial_end = _tlv(der, version_end)
    if tag != 0x02 or der[serial_start:serial_end] != b"\x01":  # pragma: no cover
        raise EmulationPkiError("unexpected serial encoding while writing the VCEK")
    patched = der[:serial_start] + b"\x00" + der[serial_end:]
    signature = issuer_key.sign(patched[cert_start:tbs_end], _AMD_PSS, hashes.SHA384())
    if len(signature) != _RSA4096_SIGNATURE_BYTES:  # pragma: no cover
        raise EmulationPkiError("unexpected ASK signature length")
    patched = patched[: -len(signature)] + signature
    return load_amd_certificates(patched)[0]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

_GPU_CAS = ("root", "identity", "provisioner")
#: RIM PKI files, in the order of ``EmulationPki``'s RIM attributes (root first).
_RIM_CERTS = ("root", "ca", "l3", "driver", "vbios")
_SNP_CAS = ("ark", "ask")


def default_pki_dir() -> Path:
    """``$XDG_DATA_HOME/lessee/emulation`` (default ``~/.local/share/lessee/emulation``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lessee" / "emulation"


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Create ``path`` exclusively; private files are 0600 from the first byte (no chmod race)."""
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _save(directory: Path, stem: str, issued: Issued[ec.EllipticCurvePrivateKey]) -> None:
    _write(directory / f"{stem}.key", _key_pem(issued.key), private=True)
    _write(directory / f"{stem}.pem", issued.pem, private=False)


def _save_rsa(directory: Path, stem: str, issued: Issued[rsa.RSAPrivateKey]) -> None:
    _write(directory / f"{stem}.key", _key_pem(issued.key), private=True)
    _write(directory / f"{stem}.pem", issued.pem, private=False)


def _check_owner(path: Path, st: os.stat_result) -> None:
    """Ours, and a directory nobody else can write: a PKI another user made (or can change) in
    a shared directory would hand that user every key the emulated hardware signs with, and
    roots a policy may pin."""
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    if euid is not None and st.st_uid != euid:
        raise EmulationPkiError(
            f"{path} belongs to uid {st.st_uid}, not to this user (uid {euid}); an emulation PKI "
            "must be your own"
        )
    if stat.S_ISDIR(st.st_mode) and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise EmulationPkiError(f"{path} is writable by group/others (chmod go-w)")


def check_pki_directory(directory: Path) -> None:
    """The PKI directory and its subdirectories are this user's and not writable by others."""
    for d in (directory, *(directory / sub for sub in ("gpu", "rim", "snp"))):
        try:
            st = d.lstat()
        except FileNotFoundError:
            continue  # what is missing is named by the read that needs it
        except OSError as exc:
            raise EmulationPkiError(f"{d}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise EmulationPkiError(f"{d} is not a directory (a symlink is refused)")
        _check_owner(d, st)


def _read(path: Path, *, private: bool = False) -> bytes:
    try:
        st = path.stat()
    except OSError as exc:
        raise EmulationPkiError(f"emulation PKI file {path} is missing ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise EmulationPkiError(f"emulation PKI file {path} is not a regular file")
    _check_owner(path, st)
    if private and st.st_mode & 0o077:
        raise EmulationPkiError(
            f"private key {path} is accessible to other users (mode {stat.S_IMODE(st.st_mode):o});"
            " it must be 0600"
        )
    if st.st_size > MAX_PKI_FILE_BYTES:
        raise EmulationPkiError(f"emulation PKI file {path} is larger than {MAX_PKI_FILE_BYTES}")
    return path.read_bytes()


def _load_cert(path: Path) -> x509.Certificate:
    data = _read(path)
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise EmulationPkiError(f"emulation PKI file {path} is not a PEM certificate") from None
    if cert.public_bytes(Encoding.PEM) != data:  # exactly what ``create`` wrote, nothing more
        raise EmulationPkiError(f"emulation PKI file {path} holds bytes besides its certificate")
    return cert


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    # RSA key validation (a quarter second per RSA-4096 key) guards against malformed keys from
    # untrusted sources; these were written by ``create`` into a 0700 directory, and each key is
    # still checked against its certificate below. Skipping it makes a reload ~50x faster.
    data = _read(path, private=True)
    try:
        key = serialization.load_pem_private_key(
            data, password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError):
        raise EmulationPkiError(f"emulation PKI file {path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise EmulationPkiError(f"emulation PKI key {path} is of an unexpected type")
    if _key_pem(key) != data:  # exactly what ``create`` wrote, nothing more
        raise EmulationPkiError(f"emulation PKI file {path} holds bytes besides its key")
    return key


def _same_public_key(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> bool:
    fmt = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _load_ec(directory: Path, stem: str) -> Issued[ec.EllipticCurvePrivateKey]:
    cert = _load_cert(directory / f"{stem}.pem")
    key = _load_key(directory / f"{stem}.key")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise EmulationPkiError(f"emulation PKI key {directory / stem}.key is not P-384")
    if not _same_public_key(cert, key):
        raise EmulationPkiError(f"{directory / stem}.key does not belong to {stem}.pem")
    return Issued(cert, key)


def _load_rsa(directory: Path, stem: str) -> Issued[rsa.RSAPrivateKey]:
    cert = _load_cert(directory / f"{stem}.pem")
    key = _load_key(directory / f"{stem}.key")
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != AMD_RSA_BITS:
        raise EmulationPkiError(f"emulation PKI key {directory / stem}.key is not RSA-4096")
    if not _same_public_key(cert, key):
        raise EmulationPkiError(f"{directory / stem}.key does not belong to {stem}.pem")
    return Issued(cert, key)


# --------------------------------------------------------------------------------------------
# The PKI
# --------------------------------------------------------------------------------------------


class EmulationPki:
    """One installation's emulation roots, intermediates, device identities and keys.

    Obtain one with ``load_or_create`` (the normal path), ``create`` or ``load``. Immutable once
    made, except for VCEKs, which are derived per TCB on first use and remembered in memory, and
    the current AMD CRL, signed on demand and remembered while it is current (``amd_crl``).
    """

    def __init__(
        self,
        *,
        directory: Path,
        created_at: datetime,
        gpu_root: Issued[ec.EllipticCurvePrivateKey],
        gpu_identity: Issued[ec.EllipticCurvePrivateKey],
        gpu_provisioner: Issued[ec.EllipticCurvePrivateKey],
        gpus: tuple[GpuIdentity, ...],
        rim_root: Issued[ec.EllipticCurvePrivateKey],
        rim_ca: Issued[ec.EllipticCurvePrivateKey],
        rim_l3: Issued[ec.EllipticCurvePrivateKey],
        rim_driver_signer: Issued[ec.EllipticCurvePrivateKey],
        rim_vbios_signer: Issued[ec.EllipticCurvePrivateKey],
        ark: Issued[rsa.RSAPrivateKey],
        ask: Issued[rsa.RSAPrivateKey],
        chip_secret: bytes,
    ) -> None:
        self.directory = directory
        self.created_at = created_at
        self.gpu_root = gpu_root
        self.gpu_identity = gpu_identity
        self.gpu_provisioner = gpu_provisioner
        self.gpus = gpus
        self.rim_root = rim_root
        self.rim_ca = rim_ca
        self.rim_l3 = rim_l3
        self.rim_driver_signer = rim_driver_signer
        self.rim_vbios_signer = rim_vbios_signer
        self.ark = ark
        self.ask = ask
        self._chip_secret = chip_secret
        self._vceks: dict[bytes, Issued[ec.EllipticCurvePrivateKey]] = {}
        #: the last revocation-free CRL made, with its (lastUpdate, nextUpdate)
        self._crl: tuple[bytes, datetime, datetime] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EmulationPki(directory={str(self.directory)!r}, roots={self.root_fingerprints()})"

    # --- creation and loading -----------------------------------------------------------------

    @classmethod
    def load_or_create(
        cls, directory: Path | str | None = None, *, now: datetime | None = None
    ) -> EmulationPki:
        """Load the PKI in ``directory`` (default ``default_pki_dir()``), making it if absent."""
        path = Path(directory) if directory is not None else default_pki_dir()
        if (path / "manifest.json").exists():
            return cls.load(path)
        try:
            return cls.create(path, now=now)
        except EmulationPkiError:
            if (path / "manifest.json").exists():  # a concurrent creator won the rename
                return cls.load(path)
            raise

    @classmethod
    def create(cls, directory: Path | str, *, now: datetime | None = None) -> EmulationPki:
        """Generate a fresh PKI into ``directory``, which must be absent or empty.

        ``now`` (default: the clock) dates the certificates. Everything is written into a
        temporary sibling directory and renamed into place, so a crash never leaves a partial
        PKI and of two concurrent creators exactly one wins (``load_or_create`` then loads the
        winner's; ``create`` raises).
        """
        path = Path(directory)
        when = require_aware(now, name="now") if now is not None else datetime.now(UTC)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            # checked before the (slow) key generation; the rename below catches races
            raise EmulationPkiError(
                f"{path} exists and is not empty; remove it or choose another directory"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
        tmp.mkdir(mode=0o700)
        try:
            pki = cls._generate(tmp, when)
            # The mode is set before the rename, never by path after it: a symlink planted at
            # ``path`` in between would have been followed.
            os.chmod(tmp, 0o700)
            try:
                os.rename(tmp, path)  # replaces an empty directory, fails on a non-empty one
            except OSError:
                raise EmulationPkiError(
                    f"{path} exists and is not empty (another process may have just created"
                    " a PKI there); remove it or choose another directory"
                ) from None
            pki.directory = path
            return pki
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def _generate(cls, out: Path, now: datetime) -> EmulationPki:
        far = now + CA_VALIDITY
        gpu_root = _nvidia_ca(
            "Device Identity Root", _p384(), None, now=now, not_after=DEVICE_NOT_AFTER
        )
        identity = _nvidia_ca(
            "GH100 Identity", _p384(), gpu_root, now=now, not_after=DEVICE_NOT_AFTER
        )
        provisioner = _nvidia_ca(
            "GH100 Provisioner ICA 1", _p384(), identity, now=now, not_after=DEVICE_NOT_AFTER
        )
        gpus = tuple(_gpu_identity(i, provisioner, now=now) for i in range(MAX_EMULATED_GPUS))
        rim_root = _nvidia_ca("CoRIM Signing Root", _p384(), None, now=now, not_after=far)
        # pathLen as on NVIDIA's certificates: none on the CA, 0 on the L3 above the leaves
        rim_ca = _nvidia_ca("Reference Value GH100 CA", _p384(), rim_root, now=now, not_after=far)
        rim_l3 = _nvidia_ca(
            "Reference Value L3 GH100 001", _p384(), rim_ca, now=now, not_after=far, path_length=0
        )
        rim_driver_signer = _rim_signer(rim_l3, now=now)
        rim_vbios_signer = _rim_signer(rim_l3, now=now)
        rim_pki = (rim_root, rim_ca, rim_l3, rim_driver_signer, rim_vbios_signer)
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=AMD_RSA_BITS)
        ark = _amd_ca("ARK-Milan", ark_key, None, now=now, serial=0x10000)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=AMD_RSA_BITS)
        ask = _amd_ca("SEV-Milan", ask_key, ark, now=now, serial=0x10001)
        chip_secret = secrets.token_bytes(CHIP_SECRET_BYTES)

        for sub in ("gpu", "rim", "snp"):
            (out / sub).mkdir(mode=0o700)
        for stem, issued in zip(_GPU_CAS, (gpu_root, identity, provisioner), strict=True):
            _save(out / "gpu", stem, issued)
        for g in gpus:
            gdir = out / "gpu" / str(g.index)
            gdir.mkdir(mode=0o700)
            _save(gdir, "brom", g.brom)
            _save(gdir, "leaf", g.leaf)
        for stem, issued in zip(_RIM_CERTS, rim_pki, strict=True):
            _save(out / "rim", stem, issued)
        _save_rsa(out / "snp", "ark", ark)
        _save_rsa(out / "snp", "ask", ask)
        _write(out / "snp" / "chip.secret", chip_secret, private=True)
        pki = cls(
            directory=out,
            created_at=now,
            gpu_root=gpu_root,
            gpu_identity=identity,
            gpu_provisioner=provisioner,
            gpus=gpus,
            rim_root=rim_root,
            rim_ca=rim_ca,
            rim_l3=rim_l3,
            rim_driver_signer=rim_driver_signer,
            rim_vbios_signer=rim_vbios_signer,
            ark=ark,
            ask=ask,
            chip_secret=chip_secret,
        )
        manifest = {
            "format": PKI_FORMAT,
            "version": PKI_FORMAT_VERSION,
            "created_at": now.isoformat(),
            "gpus": MAX_EMULATED_GPUS,
            "roots_sha256": pki.root_fingerprints(),
            # The chip secret is 64 arbitrary bytes: only this digest shows it was not replaced.
            "chip_secret_sha256": hashlib.sha256(chip_secret).hexdigest(),
        }
        _write(
            out / "manifest.json", json.dumps(manifest, indent=2).encode() + b"\n", private=False
        )
        return pki

    @classmethod
    def load(cls, directory: Path | str) -> EmulationPki:
        """Load an existing PKI; EmulationPkiError if anything is missing, unsafe or altered."""
        path = Path(directory)
        check_pki_directory(path)
        try:
            # the strict reader: a manifest nested thousands deep is "not JSON", not a
            # RecursionError (so are bad UTF-8, huge integers and duplicate keys)
            manifest = load_json(_read(path / "manifest.json"), what="manifest.json")
        except InputError:
            raise EmulationPkiError(f"{path / 'manifest.json'} is not JSON") from None
        if (
            isinstance(manifest, dict)
            and manifest.get("format") == PKI_FORMAT
            and manifest.get("version") == 1
        ):
            raise EmulationPkiError(
                f"{path} holds a version-1 emulation PKI (3-certificate RIM chain, one signer for"
                f" both RIMs); this lessee needs version {PKI_FORMAT_VERSION} (NVIDIA's 4-level RIM"
                " PKI). Remove the directory and run again to recreate it, then put the new root"
                " fingerprints in your policies' roots.extra_trusted_sha256"
            )
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != PKI_FORMAT
            or manifest.get("version") != PKI_FORMAT_VERSION
            or manifest.get("gpus") != MAX_EMULATED_GPUS
        ):
            raise EmulationPkiError(
                f"{path} holds no emulation PKI of format {PKI_FORMAT} v{PKI_FORMAT_VERSION}"
            )
        try:
            created_at = datetime.fromisoformat(str(manifest.get("created_at")))
            created_at = require_aware(created_at, name="created_at")
        except (ValueError, InputError):
            raise EmulationPkiError(f"{path / 'manifest.json'}: bad created_at") from None
        gpu = path / "gpu"
        cas = [_load_ec(gpu, stem) for stem in _GPU_CAS]
        gpus = tuple(
            GpuIdentity(
                index=i,
                brom=_load_ec(gpu / str(i), "brom"),
                leaf=_load_ec(gpu / str(i), "leaf"),
            )
            for i in range(MAX_EMULATED_GPUS)
        )
        rims = [_load_ec(path / "rim", stem) for stem in _RIM_CERTS]
        ark = _load_rsa(path / "snp", "ark")
        ask = _load_rsa(path / "snp", "ask")
        chip_secret = _read(path / "snp" / "chip.secret", private=True)
        if (
            len(chip_secret) != CHIP_SECRET_BYTES
            or manifest.get("chip_secret_sha256") != hashlib.sha256(chip_secret).hexdigest()
        ):
            raise EmulationPkiError(f"{path / 'snp' / 'chip.secret'} was altered or is missing")
        pki = cls(
            directory=path,
            created_at=created_at,
            gpu_root=cas[0],
            gpu_identity=cas[1],
            gpu_provisioner=cas[2],
            gpus=gpus,
            rim_root=rims[0],
            rim_ca=rims[1],
            rim_l3=rims[2],
            rim_driver_signer=rims[3],
            rim_vbios_signer=rims[4],
            ark=ark,
            ask=ask,
            chip_secret=chip_secret,
        )
        if manifest.get("roots_sha256") != pki.root_fingerprints():
            raise EmulationPkiError(
                f"the roots in {path} are not the ones recorded at creation (manifest.json)"
            )
        return pki

    # --- what others use ----------------------------------------------------------------------

    def root_fingerprints(self) -> dict[str, str]:
        """SHA-256 (hex, of the DER) of each emulation root, for ``roots.extra_trusted_sha256``."""
        return {
            "gpu_device_root": self.gpu_root.sha256,
            "rim_root": self.rim_root.sha256,
            "snp_ark": self.ark.sha256,
        }

    def gpu(self, index: int) -> GpuIdentity:
        if not isinstance(index, int) or not 0 <= index < MAX_EMULATED_GPUS:
            raise InputError(
                f"emulated GPU index must be 0..{MAX_EMULATED_GPUS - 1}, got {index!r}"
            )
        return self.gpus[index]

    def device_chain(self, index: int) -> tuple[x509.Certificate, ...]:
        """GPU ``index``'s chain as NVML hands it out: leaf, BROM, Provisioner, Identity, root."""
        g = self.gpu(index)
        return (
            g.leaf.cert,
            g.brom.cert,
            self.gpu_provisioner.cert,
            self.gpu_identity.cert,
            self.gpu_root.cert,
        )

    def device_issuers(self, index: int) -> tuple[Issued[ec.EllipticCurvePrivateKey], ...]:
        """The issuer (with key) of each certificate of ``device_chain(index)``, leaf first."""
        g = self.gpu(index)
        return (g.brom, self.gpu_provisioner, self.gpu_identity, self.gpu_root, self.gpu_root)

    def rim_signer(self, kind: str) -> Issued[ec.EllipticCurvePrivateKey]:
        """The leaf that signs ``kind`` ("driver" or "vbios") RIMs: each kind has its own."""
        if kind == "driver":
            return self.rim_driver_signer
        if kind == "vbios":
            return self.rim_vbios_signer
        raise InputError(f"RIM kind must be 'driver' or 'vbios', not {kind!r}")

    def rim_chain(self, kind: str) -> tuple[x509.Certificate, ...]:
        """Signer, L3, CA, root: what a ``kind`` RIM's X509Data carries, in that order."""
        return (
            self.rim_signer(kind).cert,
            self.rim_l3.cert,
            self.rim_ca.cert,
            self.rim_root.cert,
        )

    def rim_ocsp_subjects(
        self,
    ) -> tuple[tuple[x509.Certificate, Issued[ec.EllipticCurvePrivateKey]], ...]:
        """Every RIM certificate a verifier checks revocation for, with its issuer, once each.

        NVIDIA's rule is every certificate of a RIM chain but the root; the two RIMs share the
        L3 and CA, so: driver signer, L3, CA (the driver chain's order), then VBIOS signer.
        """
        return (
            (self.rim_driver_signer.cert, self.rim_l3),
            (self.rim_l3.cert, self.rim_ca),
            (self.rim_ca.cert, self.rim_root),
            (self.rim_vbios_signer.cert, self.rim_l3),
        )

    @property
    def chip_id(self) -> bytes:
        """The emulated chip's 64-byte CHIP_ID (= the VCEK hwID), derived from the chip secret."""
        return hmac.new(self._chip_secret, b"LESSEE EMULATION CHIP_ID", hashlib.sha512).digest()

    def vcek(self, tcb: SnpTcb) -> Issued[ec.EllipticCurvePrivateKey]:
        """The VCEK for ``tcb``: key derived from the chip secret and the TCB, as AMD's is.

        A VCEK certifies one TCB; a report at another TCB needs another VCEK, so they are made on
        demand (one RSA-PSS signature by the ASK) and remembered for this process.
        """
        with self._lock:
            hit = self._vceks.get(tcb.raw)
        if hit is not None:
            return hit
        seed = HKDF(
            algorithm=hashes.SHA384(), length=64, salt=None, info=b"LESSEE EMULATION VCEK" + tcb.raw
        ).derive(self._chip_secret)
        scalar = int.from_bytes(seed, "big") % (P384_ORDER - 1) + 1
        key = ec.derive_private_key(scalar, ec.SECP384R1())
        b = _builder(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, EMULATION_LABEL),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, EMULATION_NOTICE),
                ]
            ),
            self.ask.cert.subject,
            key.public_key(),
            not_before=self.created_at - BACKDATE,
            not_after=self.created_at + VCEK_VALIDITY,
            serial=1,
        )

        def ext(oid: x509.ObjectIdentifier, value: bytes) -> None:
            nonlocal b
            b = b.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)

        def integer(v: int) -> bytes:
            body = v.to_bytes(1, "big") if v < 0x80 else b"\x00" + v.to_bytes(1, "big")
            return _der(0x02, body)

        # The order of AMD's VCEK extensions: struct version, product name, bl, tee, the four
        # reserved SPLs, snp, microcode, hwID.
        ext(OID_AMD_STRUCT_VERSION, integer(0))
        ext(OID_AMD_PRODUCT_NAME, _der(0x16, AMD_PRODUCT_NAME.encode("ascii")))
        ext(OID_AMD_BL_SPL, integer(tcb.bootloader))
        ext(OID_AMD_TEE_SPL, integer(tcb.tee))
        for i in (4, 5, 6, 7):
            ext(x509.ObjectIdentifier(f"{_AMD}.3.{i}"), integer(0))
        ext(OID_AMD_SNP_SPL, integer(tcb.snp))
        ext(OID_AMD_UCODE_SPL, integer(tcb.microcode))
        ext(OID_AMD_HWID, self.chip_id)
        cert = b.sign(self.ask.key, hashes.SHA384(), rsa_padding=_AMD_PSS)
        issued = Issued(_with_serial_zero(cert, self.ask.key), key)
        with self._lock:
            return self._vceks.setdefault(tcb.raw, issued)

    def ocsp_response(
        self,
        cert: x509.Certificate,
        issuer: Issued[ec.EllipticCurvePrivateKey],
        *,
        at: datetime,
        revoked: bool = False,
        validity: timedelta = OCSP_VALIDITY,
    ) -> bytes:
        """An OCSP response about ``cert`` signed by its issuer itself, current at ``at``.

        SHA-384 CertID (what NVIDIA's verifier asks with), responder named by key hash,
        thisUpdate ``at``, nextUpdate ``at + validity``, no nonce (a stapled answer is made
        before anyone asks). ``cryptography`` stamps producedAt with the signing time, so the
        response verifies from then on (minus the verifiers' 5-minute skew) until nextUpdate.
        """
        at = require_aware(at)
        if cert.issuer != issuer.cert.subject:
            raise InputError("the OCSP issuer given did not issue the certificate")
        status = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=cert,
            issuer=issuer.cert,
            algorithm=hashes.SHA384(),
            cert_status=status,
            this_update=at,
            next_update=at + validity,
            revocation_time=at - timedelta(hours=1) if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
        response = builder.sign(issuer.key, hashes.SHA384())
        return response.public_bytes(Encoding.DER)

    def amd_crl(self, *, at: datetime, revoked_serials: tuple[int, ...] = ()) -> bytes:
        """AMD's CRL for the emulated Milan ARK, current at ``at`` (DER), in AMD's form.

        Issuer = the ARK's subject, signed by the ARK with RSASSA-PSS/SHA-384/MGF1-SHA-384/salt
        48 (``_AMD_PSS``, as the KDS CRLs), lastUpdate ``at - AMD_CRL_BACKDATE``, nextUpdate
        ``at + AMD_CRL_VALIDITY``, listing ``revoked_serials`` (none normally; tests revoke the
        ASK with ``(pki.ask.cert.serial_number,)``). A CRL is public data: it is made from the
        ARK key at run time rather than stored, so it is always current and never goes stale
        in the PKI directory. The revocation-free CRL is remembered and handed out again while
        ``at`` lies in it with ``AMD_CRL_MIN_REMAINING`` left (one RSA-4096 signature per week,
        not per report, and the same bytes in every bundle, as a host re-serves AMD's file).
        """
        at = require_aware(at)
        if len(revoked_serials) > MAX_AMD_CRL_REVOKED:
            raise InputError(f"an emulated CRL lists at most {MAX_AMD_CRL_REVOKED} serials")
        if not revoked_serials:
            with self._lock:
                hit = self._crl
            if (
                hit is not None
                and hit[1] + AMD_CRL_BACKDATE <= at <= hit[2] - AMD_CRL_MIN_REMAINING
            ):
                return hit[0]
        last_update = at - AMD_CRL_BACKDATE
        next_update = at + AMD_CRL_VALIDITY
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.cert.subject)
            .last_update(last_update)
            .next_update(next_update)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(last_update)
                .build()
            )
        crl = builder.sign(self.ark.key, hashes.SHA384(), rsa_padding=_AMD_PSS)
        der = crl.public_bytes(Encoding.DER)
        if not revoked_serials:
            with self._lock:
                self._crl = (der, crl.last_update_utc, crl.next_update_utc or next_update)
        return der
