"""Generator of the synthetic test PKI and OCSP responses for the revocation tests.

Everything is built from the committed TEST-ONLY keys in ``tests/revocation/keys/`` with fixed
names, serials and dates, so the structure is reproducible (ECDSA signatures are randomised, so
the bytes of P-384-signed objects differ from run to run; the Ed25519 responder's are
deterministic). Run ``python -m tests.revocation.pki OUT_DIR`` to write the chain and every case
as files (handy for trying ``lessee ... --ocsp FILE`` by hand).

Chain: root -> intermediate -> leaf. Responses about the leaf are signed by the intermediate
itself or by a delegated responder that the intermediate issued.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEYS = Path(__file__).parent / "keys"

#: The verification time every case is built around (= tests.conftest.TODAY).
NOW = datetime(2026, 11, 28, tzinfo=UTC)
THIS_UPDATE = NOW - timedelta(hours=1)
NEXT_UPDATE = NOW + timedelta(days=7)
REVOKED_AT = datetime(2026, 10, 1, tzinfo=UTC)
NONCE = bytes(range(32))

SERIAL_ROOT = 0x1001
SERIAL_INTERMEDIATE = 0x1002
SERIAL_LEAF = 0x1003
SERIAL_RESPONDER = 0x2001
SERIAL_RESPONDER_NO_EKU = 0x2002
SERIAL_RESPONDER_EXPIRED = 0x2003
SERIAL_RESPONDER_ED25519 = 0x2004
SERIAL_ROGUE_BY_ROOT = 0x3001
SERIAL_ROGUE_SELF = 0x3002

Signer = Literal[
    "issuer", "responder", "responder_no_eku", "responder_expired", "responder_ed25519",
    "rogue_self", "rogue_by_root", "rogue_as_issuer",
]  # fmt: skip


def _key(name: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(
        (KEYS / f"TEST-ONLY-{name}.key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _ed_key() -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(
        (KEYS / "TEST-ONLY-responder-ed25519.key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lessee TEST-ONLY"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    serial: int,
    ca: bool,
    not_before: datetime = datetime(2025, 1, 1, tzinfo=UTC),
    not_after: datetime = datetime(2030, 1, 1, tzinfo=UTC),
    eku: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(signing_key, hashes.SHA384())


@dataclass(frozen=True)
class TestPki:
    """The synthetic chain plus every responder certificate the cases need."""

    __test__ = False  # not a pytest test class

    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    responder: x509.Certificate
    responder_no_eku: x509.Certificate
    responder_expired: x509.Certificate
    responder_ed25519: x509.Certificate
    rogue_self: x509.Certificate
    rogue_by_root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    intermediate_key: ec.EllipticCurvePrivateKey
    responder_key: ec.EllipticCurvePrivateKey
    responder_ed25519_key: ed25519.Ed25519PrivateKey
    rogue_key: ec.EllipticCurvePrivateKey

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """Leaf first, root last (the order devices send)."""
        return (self.leaf, self.intermediate, self.root)

    def pem_chain(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


@cache
def load_pki() -> TestPki:
    root_key, inter_key = _key("root"), _key("intermediate")
    leaf_key, resp_key, rogue_key = _key("leaf"), _key("responder"), _key("rogue")
    ed_key = _ed_key()
    root_name, inter_name = _name("OCSP Root"), _name("OCSP Intermediate")
    root = _cert(
        subject=root_name,
        issuer=root_name,
        public_key=root_key.public_key(),
        signing_key=root_key,
        serial=SERIAL_ROOT,
        ca=True,
    )
    inter = _cert(
        subject=inter_name,
        issuer=root_name,
        public_key=inter_key.public_key(),
        signing_key=root_key,
        serial=SERIAL_INTERMEDIATE,
        ca=True,
    )
    leaf = _cert(
        subject=_name("Leaf"),
        issuer=inter_name,
        public_key=leaf_key.public_key(),
        signing_key=inter_key,
        serial=SERIAL_LEAF,
        ca=False,
    )
    ocsp_eku = [ExtendedKeyUsageOID.OCSP_SIGNING]
    responder = _cert(
        subject=_name("OCSP Responder"),
        issuer=inter_name,
        public_key=resp_key.public_key(),
        signing_key=inter_key,
        serial=SERIAL_RESPONDER,
        ca=False,
        eku=ocsp_eku,
    )
    responder_no_eku = _cert(
        subject=_name("OCSP Responder without EKU"),
        issuer=inter_name,
        public_key=resp_key.public_key(),
        signing_key=inter_key,
        serial=SERIAL_RESPONDER_NO_EKU,
        ca=False,
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    responder_expired = _cert(
        subject=_name("OCSP Responder expired"),
        issuer=inter_name,
        public_key=resp_key.public_key(),
        signing_key=inter_key,
        serial=SERIAL_RESPONDER_EXPIRED,
        ca=False,
        eku=ocsp_eku,
        not_before=datetime(2025, 1, 1, tzinfo=UTC),
        not_after=datetime(2026, 1, 1, tzinfo=UTC),
    )
    responder_ed = _cert(
        subject=_name("OCSP Responder Ed25519"),
        issuer=inter_name,
        public_key=ed_key.public_key(),
        signing_key=inter_key,
        serial=SERIAL_RESPONDER_ED25519,
        ca=False,
        eku=ocsp_eku,
    )
    rogue_self = _cert(
        subject=_name("Rogue Responder"),
        issuer=_name("Rogue Responder"),
        public_key=rogue_key.public_key(),
        signing_key=rogue_key,
        serial=SERIAL_ROGUE_SELF,
        ca=False,
        eku=ocsp_eku,
    )
    rogue_by_root = _cert(
        subject=_name("Root-issued Responder"),
        issuer=root_name,
        public_key=rogue_key.public_key(),
        signing_key=root_key,
        serial=SERIAL_ROGUE_BY_ROOT,
        ca=False,
        eku=ocsp_eku,
    )
    return TestPki(
        root=root,
        intermediate=inter,
        leaf=leaf,
        responder=responder,
        responder_no_eku=responder_no_eku,
        responder_expired=responder_expired,
        responder_ed25519=responder_ed,
        rogue_self=rogue_self,
        rogue_by_root=rogue_by_root,
        root_key=root_key,
        intermediate_key=inter_key,
        responder_key=resp_key,
        responder_ed25519_key=ed_key,
        rogue_key=rogue_key,
    )


def cert_id_hashes(
    cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) as ``cryptography`` computes them, independently of the
    code under test."""
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
    return request.issuer_name_hash, request.issuer_key_hash


def make_response(
    pki: TestPki,
    *,
    cert: x509.Certificate | None = None,
    issuer: x509.Certificate | None = None,
    status: Literal["good", "revoked", "hold", "unknown"] = "good",
    reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise,
    this_update: datetime = THIS_UPDATE,
    next_update: datetime | None = NEXT_UPDATE,
    signer: Signer = "issuer",
    cert_id_hash: hashes.HashAlgorithm | None = None,
    nonce: bytes | None = None,
    serial: int | None = None,
    name_hash: bytes | None = None,
    key_hash: bytes | None = None,
    by_name: bool = False,
    produced_at: datetime | None = None,
    critical_extension: bool = False,
) -> bytes:
    """One DER OCSP response about ``cert`` (default: the leaf, issued by the intermediate)."""
    cert = cert or pki.leaf
    issuer = issuer or pki.intermediate
    alg = cert_id_hash or hashes.SHA384()
    cert_status = {
        "good": ocsp.OCSPCertStatus.GOOD,
        "revoked": ocsp.OCSPCertStatus.REVOKED,
        "hold": ocsp.OCSPCertStatus.REVOKED,
        "unknown": ocsp.OCSPCertStatus.UNKNOWN,
    }[status]
    revoked_at = REVOKED_AT if status in ("revoked", "hold") else None
    why = x509.ReasonFlags.certificate_hold if status == "hold" else reason
    why = why if status in ("revoked", "hold") else None
    real_name_hash, real_key_hash = cert_id_hashes(cert, issuer, alg)
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=name_hash if name_hash is not None else real_name_hash,
        issuer_key_hash=key_hash if key_hash is not None else real_key_hash,
        serial_number=serial if serial is not None else cert.serial_number,
        algorithm=alg,
        cert_status=cert_status,
        this_update=this_update,
        next_update=next_update,
        revocation_time=revoked_at,
        revocation_reason=why,
    )
    encoding = ocsp.OCSPResponderEncoding.NAME if by_name else ocsp.OCSPResponderEncoding.HASH
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    included: list[x509.Certificate] = []
    if signer == "issuer":
        responder_cert, key = issuer, pki.intermediate_key
        if issuer is pki.root:
            key = pki.root_key
    elif signer == "rogue_as_issuer":
        # ResponderID byName = the issuer's name, but signed with a key the issuer never saw
        # (a self-made certificate carrying the issuer's name supplies the name).
        responder_cert = _cert(
            subject=issuer.subject,
            issuer=issuer.subject,
            public_key=pki.rogue_key.public_key(),
            signing_key=pki.rogue_key,
            serial=SERIAL_ROGUE_SELF + 1,
            ca=True,
        )
        key, encoding = pki.rogue_key, ocsp.OCSPResponderEncoding.NAME
    else:
        delegated: dict[
            str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey]
        ] = {
            "responder": (pki.responder, pki.responder_key),
            "responder_no_eku": (pki.responder_no_eku, pki.responder_key),
            "responder_expired": (pki.responder_expired, pki.responder_key),
            "responder_ed25519": (pki.responder_ed25519, pki.responder_ed25519_key),
            "rogue_self": (pki.rogue_self, pki.rogue_key),
            "rogue_by_root": (pki.rogue_by_root, pki.rogue_key),
        }
        responder_cert, key = delegated[signer]
        included = [responder_cert]
    builder = builder.responder_id(encoding, responder_cert)
    if included:
        builder = builder.certificates(included)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    if critical_extension:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
            critical=True,
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA384()
    der = builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)
    return resign(der, key, produced_at=produced_at or this_update)


# --- minimal DER surgery (test side only): fixed producedAt, batched responses ------------------


def _der_tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the DER TLV at ``pos`` (inputs are our own output)."""
    tag, first, pos = buf[pos], buf[pos + 1], pos + 2
    if first < 0x80:
        return tag, pos, pos + first
    count = first & 0x7F
    length = int.from_bytes(buf[pos : pos + count], "big")
    return tag, pos + count, pos + count + length


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _children(der: bytes) -> list[bytes]:
    """The full TLVs inside the constructed TLV ``der``."""
    _tag, start, end = _der_tlv(der, 0)
    out, pos = [], start
    while pos < end:
        _t, _vstart, vend = _der_tlv(der, pos)
        out.append(der[pos:vend])
        pos = vend
    return out


def _basic(der: bytes) -> list[bytes]:
    """[tbsResponseData, signatureAlgorithm, signature, certs?] of an OCSPResponse."""
    _status, response_bytes = _children(der)
    (inner,) = _children(response_bytes)  # [0] EXPLICIT ResponseBytes
    _oid, octets = _children(inner)
    _tag, start, end = _der_tlv(octets, 0)
    return _children(octets[start:end])


def _wrap_basic(parts: list[bytes]) -> bytes:
    basic = _tlv(0x30, b"".join(parts))
    response_bytes = _tlv(0x30, _tlv(0x06, _OCSP_BASIC_OID) + _tlv(0x04, basic))
    return _tlv(0x30, b"\x0a\x01\x00" + _tlv(0xA0, response_bytes))


#: id-pkix-ocsp-basic 1.3.6.1.5.5.7.48.1.1, content octets.
_OCSP_BASIC_OID = bytes.fromhex("2b0601050507300101")


def _generalized(when: datetime) -> bytes:
    return _tlv(0x18, when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ").encode())


def resign(
    der: bytes,
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    *,
    produced_at: datetime | None = None,
    tbs: bytes | None = None,
) -> bytes:
    """Re-sign a response after editing its tbsResponseData (producedAt, or a whole new tbs).

    ``cryptography`` stamps producedAt with the host clock; the cases need it fixed.
    """
    parts = _basic(der)
    new_tbs = tbs if tbs is not None else parts[0]
    if produced_at is not None:
        old = _generalized(ocsp.load_der_ocsp_response(der).produced_at_utc)
        assert new_tbs.count(old) == 1
        new_tbs = new_tbs.replace(old, _generalized(produced_at))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(new_tbs)
    else:
        signature = key.sign(new_tbs, ec.ECDSA(hashes.SHA384()))
    return _wrap_basic([new_tbs, parts[1], _tlv(0x03, b"\x00" + signature), *parts[3:]])


def batch(first: bytes, *others: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """One response whose SingleResponses are those of ``first`` followed by the others'."""
    tbs_children = _children(_basic(first)[0])
    singles = [s for r in (first, *others) for s in _children(_children(_basic(r)[0])[2])]
    # tbsResponseData: responderID, producedAt, responses, [extensions] (no explicit version).
    tbs_children[2] = _tlv(0x30, b"".join(singles))
    return resign(first, key, tbs=_tlv(0x30, b"".join(tbs_children)))


def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


def build_cases(pki: TestPki) -> dict[str, bytes]:
    """Every named case the brief lists, about the leaf, judged at NOW."""
    inter_alg = hashes.SHA384()
    name_hash, key_hash = cert_id_hashes(pki.leaf, pki.intermediate, inter_alg)
    flipped_name = bytes([name_hash[0] ^ 1]) + name_hash[1:]
    flipped_key = bytes([key_hash[0] ^ 1]) + key_hash[1:]
    return {
        "good": make_response(pki),
        "good_by_name": make_response(pki, by_name=True),
        "revoked": make_response(pki, status="revoked"),
        "certificate_hold": make_response(pki, status="hold"),
        "unknown": make_response(pki, status="unknown"),
        "stale": make_response(
            pki, this_update=NOW - timedelta(days=10), next_update=NOW - timedelta(days=3)
        ),
        "not_yet_valid": make_response(
            pki, this_update=NOW + timedelta(hours=1), next_update=NOW + timedelta(days=7)
        ),
        "no_next_update": make_response(pki, next_update=None),
        "wrong_serial": make_response(pki, serial=SERIAL_LEAF + 1),
        "wrong_issuer_name": make_response(pki, name_hash=flipped_name),
        "wrong_issuer_key": make_response(pki, key_hash=flipped_key),
        "wrong_signer_rogue_self": make_response(pki, signer="rogue_self"),
        "wrong_signer_rogue_by_root": make_response(pki, signer="rogue_by_root"),
        "wrong_signer_as_issuer": make_response(pki, signer="rogue_as_issuer"),
        "delegated": make_response(pki, signer="responder"),
        "delegated_ed25519": make_response(pki, signer="responder_ed25519"),
        "delegated_no_eku": make_response(pki, signer="responder_no_eku"),
        "delegated_expired": make_response(pki, signer="responder_expired"),
        "nonce": make_response(pki, nonce=NONCE),
        "sha1_cert_id": make_response(pki, cert_id_hash=hashes.SHA1()),
        "sha256_cert_id": make_response(pki, cert_id_hash=hashes.SHA256()),
        "malformed": b"\x30\x03\x0a\x01",
        "try_later": unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER),
        "unauthorized": unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED),
        "intermediate_good": make_response(pki, cert=pki.intermediate, issuer=pki.root),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.revocation.pki OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    pki = load_pki()
    (out / "chain.pem").write_bytes(pki.pem_chain())
    for name, der in build_cases(pki).items():
        (out / f"{name}.der").write_bytes(der)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
