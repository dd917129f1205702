"""X.509 chain checks shared by every evidence kind (NVIDIA device and RIM chains, AMD, Intel).

Trust comes only from a pinned root passed in by the caller. A chain may end with a copy of that
root (NVIDIA device chains do) or with a certificate the root issued directly; either way the
last signature is checked with the *pinned* root's key, never with a key the device sent. Only
the last certificate may be that root's copy or self-signed: a chain padded with a second root
copy (every certificate shifted up one place) is refused. Validity is judged at the time given,
never at the host clock. A certificate with a critical extension this module does not process
is refused (RFC 5280 4.2). Whether the leaf is an end entity is the caller's rule
(``check_end_entity``): some chains end at a CA on purpose (Intel's CRL issuer chain).

ECDSA links are checked without holding the GIL where that is exactly the check
``verify_directly_issued_by`` makes (``_fast_link_verify``), and a chain's link signatures run
concurrently on the small shared verification pool of ``attest.concurrency`` (also used by
the RIM, OCSP and GPU pipeline code), with results read in chain order: the error raised never depends on
thread timing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from attest.concurrency import Deferred, offer, settle
from attest.errors import ChainError, InputError
from attest.timeutil import require_aware

#: A PEM chain file larger than this is not a certificate chain (NVIDIA's are under 5 KiB).
MAX_PEM_CHAIN_BYTES = 64 * 1024
#: No chain we accept is longer; a longer one is refused before any parsing work.
MAX_CHAIN_CERTS = 10
#: One DER certificate larger than this is refused (real ones are under 2 KiB).
MAX_CERT_BYTES = 16 * 1024

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


#: What cryptography raises for a certificate or CRL it cannot decode (names and extensions are
#: decoded lazily, so these can surface long after loading unless decoded up front; a bad
#: version is ``InvalidVersion``, not a ``ValueError``).
X509_DECODE_ERRORS = (
    ValueError,
    TypeError,  # a name attribute re-tagged (e.g. as BIT STRING) surfaces as TypeError
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER TLV at ``pos``; ValueError if malformed."""
    if pos + 2 > len(buf):
        raise ValueError("truncated DER")
    tag, first = buf[pos], buf[pos + 1]
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if not 1 <= n <= 4 or start + n > len(buf):
            raise ValueError("bad DER length")
        length = int.from_bytes(buf[start : start + n], "big")
        start += n
    if start + length > len(buf):
        raise ValueError("truncated DER")
    return tag, start, start + length


def signature_bits_canonical(cert: x509.Certificate) -> bool:
    """Is the outer signature BIT STRING's unused-bits byte 0, as DER requires for a signature?

    ``cryptography`` ignores that byte, so without this check 255 different byte strings carry
    the same certificate: harmless for the signature, but it makes "the exact bytes" ambiguous
    (caches, archives and audits key on exact bytes).
    """
    return signed_der_canonical(certificate_der(cert))


def signed_der_canonical(der: bytes) -> bool:
    """``signature_bits_canonical`` for the DER of any X.509 SIGNED{} structure (certificate,
    CRL: SEQUENCE { tbs, signatureAlgorithm, signature BIT STRING })."""
    try:
        _, start, end = _tlv(der, 0)
        _, _, pos = _tlv(der, start)  # tbsCertificate
        _, _, pos = _tlv(der, pos)  # signatureAlgorithm
        tag, bits_start, bits_end = _tlv(der, pos)
    except ValueError:
        return False
    return tag == 0x03 and bits_end == end and bits_end > bits_start and der[bits_start] == 0


def _decode_eagerly(cert: x509.Certificate) -> x509.Certificate:
    """Decode every lazily parsed field now, so a malformed certificate fails at load time
    with an InputError instead of deep inside a chain check."""
    _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
    _ = (cert.serial_number, cert.signature_hash_algorithm, list(cert.extensions))
    cert.public_key()
    if not signature_bits_canonical(cert):
        raise ValueError("certificate signature BIT STRING is not DER (unused bits must be 0)")
    return cert


def load_pem_chain(
    data: bytes, *, max_certs: int = MAX_CHAIN_CERTS
) -> tuple[x509.Certificate, ...]:
    """Parse a PEM bundle (leaf first, as devices send it), bounded in size and count."""
    if len(data) > MAX_PEM_CHAIN_BYTES:
        raise InputError(
            f"certificate chain is {len(data)} bytes; the limit is {MAX_PEM_CHAIN_BYTES}"
        )
    count = data.count(_PEM_BEGIN)
    if count == 0:
        raise InputError("no PEM certificate found in the chain")
    if count > max_certs:
        raise InputError(f"certificate chain holds {count} certificates; the limit is {max_certs}")
    try:
        return tuple(_decode_eagerly(c) for c in x509.load_pem_x509_certificates(data))
    except (*X509_DECODE_ERRORS, UnsupportedAlgorithm) as exc:
        raise InputError(f"malformed PEM certificate chain: {exc}") from exc


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse one certificate given as PEM or DER."""
    if len(data) > MAX_CERT_BYTES * 2:
        raise InputError(f"certificate is {len(data)} bytes; the limit is {MAX_CERT_BYTES * 2}")
    try:
        if _PEM_BEGIN in data:
            return _decode_eagerly(x509.load_pem_x509_certificate(data))
        return _decode_eagerly(x509.load_der_x509_certificate(data))
    except (*X509_DECODE_ERRORS, UnsupportedAlgorithm) as exc:
        raise InputError(f"malformed certificate: {exc}") from exc


def describe(cert: x509.Certificate) -> str:
    """A short, stable name for a certificate in messages: its subject CN, else the full DN."""
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cns:
        value = cns[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return cert.subject.rfc4514_string()


@dataclass(frozen=True)
class VerifiedChain:
    """A chain that led to the pinned root; valid for every time in [valid_from, valid_until]."""

    certs: tuple[x509.Certificate, ...]
    root: x509.Certificate
    valid_from: datetime
    valid_until: datetime

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[0]


def _check_validity(cert: x509.Certificate, at: datetime, what: str) -> None:
    if at < cert.not_valid_before_utc:
        raise ChainError(
            f"{what}: '{describe(cert)}' is not valid before {cert.not_valid_before_utc.isoformat()}"
            f" (verification time {at.isoformat()})",
            reason="not_yet_valid",
        )
    if at > cert.not_valid_after_utc:
        raise ChainError(
            f"{what}: '{describe(cert)}' expired at {cert.not_valid_after_utc.isoformat()}"
            f" (verification time {at.isoformat()})",
            reason="expired",
        )


#: The exact DER AlgorithmIdentifier of ecdsa-with-SHA256/384/512 (RFC 5758: parameters
#: absent), with the hash each names: the only signature algorithms the fast link check takes.
_ECDSA_ALGORITHM_IDS: dict[bytes, type[hashes.HashAlgorithm]] = {
    bytes.fromhex("300a06082a8648ce3d040302"): hashes.SHA256,
    bytes.fromhex("300a06082a8648ce3d040303"): hashes.SHA384,
    bytes.fromhex("300a06082a8648ce3d040304"): hashes.SHA512,
}


@dataclass(frozen=True)
class _SignedParts:
    """The pieces of a certificate's DER that a link signature check compares or verifies."""

    tbs: bytes  #: the whole TBSCertificate: the signed bytes
    outer_algorithm: bytes  #: Certificate.signatureAlgorithm (DER)
    inner_algorithm: bytes  #: TBSCertificate.signature (DER)
    issuer: bytes  #: TBSCertificate.issuer (DER)
    subject: bytes  #: TBSCertificate.subject (DER)


def _signed_parts(der: bytes) -> _SignedParts | None:
    """Split a certificate's DER; None if it is not shaped as X.509 says (never for a
    certificate ``cryptography`` loaded, whose DER this is: kept as a guard)."""
    try:
        tag, start, _ = _tlv(der, 0)
        tbs_tag, tbs_start, tbs_end = _tlv(der, start)
        alg_tag, _, alg_end = _tlv(der, tbs_end)
        if tag != 0x30 or tbs_tag != 0x30 or alg_tag != 0x30:
            return None
        pos = tbs_start
        tag, _, field_end = _tlv(der, pos)
        if tag == 0xA0:  # [0] EXPLICIT version
            pos = field_end
        fields: list[bytes] = []
        # serialNumber, signature, issuer, validity, subject
        for expected in (0x02, 0x30, 0x30, 0x30, 0x30):
            tag, _, field_end = _tlv(der, pos)
            if tag != expected:
                return None
            fields.append(der[pos:field_end])
            pos = field_end
    except ValueError:
        return None
    return _SignedParts(
        tbs=der[start:tbs_end],
        outer_algorithm=der[tbs_end:alg_end],
        inner_algorithm=fields[1],
        issuer=fields[2],
        subject=fields[4],
    )


def _fast_link_verify(
    child: x509.Certificate, issuer: x509.Certificate, child_der: bytes, issuer_der: bytes
) -> bool:
    """Check the link signature with ``EllipticCurvePublicKey.verify`` (which releases the GIL)
    instead of ``verify_directly_issued_by`` (which holds it): True when checked and valid,
    InvalidSignature raised when checked and invalid, False when this is not exactly the same
    check (the caller then runs ``verify_directly_issued_by``).

    ``verify_directly_issued_by`` (cryptography's Rust code) requires the TBSCertificate's
    signature algorithm to equal the outer one, the child's issuer name to equal the issuer's
    subject name, then verifies the outer signature over the TBSCertificate with the issuer's
    key and the algorithm's hash. Here the same three steps are taken, only for an outer and
    inner algorithm both exactly ecdsa-with-SHA256/384/512 without parameters, names equal
    byte for byte, and an EC issuer key; anything else (RSA, PSS, EdDSA, parameters present,
    names that differ in any byte) goes the original way, so its outcome stays the original.
    """
    parts = _signed_parts(child_der)
    issuer_parts = _signed_parts(issuer_der)
    if parts is None or issuer_parts is None:
        return False
    hash_type = _ECDSA_ALGORITHM_IDS.get(parts.outer_algorithm)
    if hash_type is None or parts.inner_algorithm != parts.outer_algorithm:
        return False
    if parts.issuer != issuer_parts.subject:
        return False
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    key.verify(child.signature, parts.tbs, ec.ECDSA(hash_type()))
    return True


def _check_signed_by(
    child: x509.Certificate,
    issuer: x509.Certificate,
    what: str,
    *,
    child_der: bytes | None = None,
    issuer_der: bytes | None = None,
) -> None:
    """Issuer name, then signature (ECDSA fast path where it is the same check)."""
    if child.issuer != issuer.subject:
        raise ChainError(
            f"{what}: issuer of '{describe(child)}' is not '{describe(issuer)}'",
            reason="issuer_mismatch",
        )
    try:
        if not _fast_link_verify(
            child,
            issuer,
            child_der if child_der is not None else certificate_der(child),
            issuer_der if issuer_der is not None else certificate_der(issuer),
        ):
            child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ChainError(
            f"{what}: signature on '{describe(child)}' does not verify with '{describe(issuer)}'",
            reason="bad_signature",
        ) from exc


#: The critical extensions a chain certificate may carry: the ones this module enforces
#: (``_check_is_ca``) and the leaf's key usage (``check_end_entity``, or the caller's own check).
#: RFC 5280 4.2 requires refusing a certificate with any other critical extension. This is an
#: allow-list, not "whatever ``cryptography`` decodes": it also decodes extensions nothing here
#: enforces (name constraints, policy constraints, ...), and accepting those critical would break
#: the same rule. Every real vendor certificate in tests/assets and the shared vectors (NVIDIA
#: device, RIM, AMD, Intel) marks exactly these two critical, and no other extension.
UNDERSTOOD_CRITICAL_EXTENSIONS: frozenset[x509.ObjectIdentifier] = frozenset(
    {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE}
)


def _check_critical_extensions(cert: x509.Certificate, what: str) -> None:
    """Refuse a critical extension outside ``UNDERSTOOD_CRITICAL_EXTENSIONS`` (RFC 5280 4.2)."""
    for ext in cert.extensions:
        if ext.critical and ext.oid not in UNDERSTOOD_CRITICAL_EXTENSIONS:
            raise ChainError(
                f"{what}: '{describe(cert)}' has critical extension {ext.oid.dotted_string}"
                " that is not understood",
                reason="unsupported_critical_extension",
            )


def _self_signed(cert: x509.Certificate) -> bool:
    """Subject equal to issuer and the signature verifies with the certificate's own key."""
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False  # self-issued under another key (a key rollover): not self-signed
    return True


def _check_only_last_is_root(
    chain: tuple[x509.Certificate, ...], ders: tuple[bytes, ...], what: str
) -> None:
    """No certificate but the chain's last is the pinned root (``ders[-1]``) or self-signed.

    A root has no place inside a chain: ``[BROM, ICA, Identity, root, root]`` (each signed by
    the next, the root by itself) has an NVIDIA device chain's length and valid links, and would
    make a CA certificate (the BROM) its leaf. Self-signed means signed by its own key, not
    merely self-issued (a key-rollover certificate may sit inside a chain; RFC 5280 6.1).
    """
    root_der = ders[len(chain)]
    for i, cert in enumerate(chain[:-1]):
        if ders[i] == root_der:
            raise ChainError(
                f"{what}: certificate {i} ('{describe(cert)}') is the pinned root; only the last"
                " certificate may be",
                reason="pinned_root_not_last",
            )
        if _self_signed(cert):
            raise ChainError(
                f"{what}: certificate {i} ('{describe(cert)}') is self-signed; only the last"
                " certificate may be",
                reason="self_signed_not_last",
            )


def check_end_entity(cert: x509.Certificate, what: str) -> None:
    """``cert`` signs data, not certificates: not a CA (no basicConstraints cA=TRUE), and a
    keyUsage, if present, that allows digitalSignature. ChainError reason ``leaf_is_ca`` or
    ``leaf_key_usage``. The leaf rule of NVIDIA device chains and of RIM signers."""
    bc = _extension(cert, x509.BasicConstraints)
    if bc is not None and bc.ca:
        raise ChainError(
            f"{what}: leaf '{describe(cert)}' is a CA certificate, not an end entity",
            reason="leaf_is_ca",
        )
    ku = _extension(cert, x509.KeyUsage)
    if ku is not None and not ku.digital_signature:
        raise ChainError(
            f"{what}: leaf '{describe(cert)}' may not make signatures (keyUsage lacks"
            " digitalSignature)",
            reason="leaf_key_usage",
        )


_E = TypeVar("_E", bound=x509.ExtensionType)


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    """The certificate's extension of ``kind``, or None where it has none."""
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_is_ca(cert: x509.Certificate, below: int, what: str) -> None:
    """``below`` = number of CA certificates between this one and the leaf."""
    bc = _extension(cert, x509.BasicConstraints)
    if bc is None:
        raise ChainError(
            f"{what}: issuer '{describe(cert)}' has no basicConstraints", reason="not_ca"
        )
    if not bc.ca:
        raise ChainError(f"{what}: issuer '{describe(cert)}' is not a CA", reason="not_ca")
    if bc.path_length is not None and below > bc.path_length:
        raise ChainError(
            f"{what}: '{describe(cert)}' allows {bc.path_length} CAs below it, chain has {below}",
            reason="path_length",
        )
    ku = _extension(cert, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:
        raise ChainError(
            f"{what}: issuer '{describe(cert)}' may not sign certificates", reason="not_ca"
        )


def verify_chain(
    certs: Sequence[x509.Certificate],
    *,
    root: x509.Certificate,
    at: datetime,
    expected_length: int | None = None,
    what: str = "certificate chain",
) -> VerifiedChain:
    """Check ``certs`` (leaf first) against the pinned ``root`` as of ``at``; raise ChainError.

    Checks, in order: length; no certificate but the last is the pinned root or self-signed;
    no certificate (the root included) has a critical extension outside
    ``UNDERSTOOD_CRITICAL_EXTENSIONS``; every certificate (and the root) valid at ``at``; each
    link's issuer name and signature; every issuer is a CA allowed to sign at that depth; the top
    of the chain is the pinned root byte for byte, or was issued by it. The leaf may be a CA
    here: callers whose leaf must be an end entity call ``check_end_entity``.
    """
    return _verify_chain(
        tuple(certs), root=root, at=at, expected_length=expected_length, what=what, links=None
    )


#: Certificates whose DER was asked for recently. ``public_bytes`` re-encodes on every call
#: (~10 us in cryptography 50, holding the GIL), and one cold GPU verification asks ~60 times
#: for the DER of the same dozen certificates (chain links, OCSP CertIDs and cache keys).
#: Keyed by object identity; each entry keeps its certificate alive, so an id cannot be reused
#: while its entry exists, and the hit is checked with ``is`` as well. Cleared when full.
MAX_DER_MEMO = 512
_der_memo: dict[int, tuple[x509.Certificate, bytes]] = {}
_der_memo_lock = threading.Lock()


def certificate_der(cert: x509.Certificate) -> bytes:
    """``cert.public_bytes(Encoding.DER)``, remembered per certificate object."""
    hit = _der_memo.get(id(cert))
    if hit is not None and hit[0] is cert:
        return hit[1]
    der = cert.public_bytes(Encoding.DER)
    with _der_memo_lock:
        if len(_der_memo) >= MAX_DER_MEMO:
            _der_memo.clear()
        _der_memo[id(cert)] = (cert, der)
    return der


@dataclass(frozen=True)
class _Link:
    """One link of a chain: ``child`` signed by ``issuer``, with both DER encodings."""

    child: x509.Certificate
    issuer: x509.Certificate
    child_der: bytes
    issuer_der: bytes

    def check(self, what: str) -> None:
        _check_signed_by(
            self.child, self.issuer, what, child_der=self.child_der, issuer_der=self.issuer_der
        )

    def window(self) -> tuple[datetime, datetime]:
        """When both certificates are valid: the times a remembered answer may be used."""
        return (
            max(self.child.not_valid_before_utc, self.issuer.not_valid_before_utc),
            min(self.child.not_valid_after_utc, self.issuer.not_valid_after_utc),
        )


@dataclass(frozen=True)
class _Claim:
    """How one link of a chain being verified gets its answer (see ``_LinkCache.claim``)."""

    kind: str  #: "hit" (remembered), "own" (this chain checks it), "shared" (another does)
    deferred: Deferred[None] | None = None
    key: tuple[bytes, bytes] | None = None


def _verify_chain(
    chain: tuple[x509.Certificate, ...],
    *,
    root: x509.Certificate,
    at: datetime,
    expected_length: int | None,
    what: str,
    links: _LinkCache | None,
    ders: tuple[bytes, ...] | None = None,
) -> VerifiedChain:
    """``verify_chain``, optionally answering link signatures from ``links``.

    ``ders`` (the DER of every certificate of ``chain`` and then of ``root``), when the caller
    already has them, saves serialising the certificates again for the link keys. Only the
    signature and issuer-name check of a link is ever taken from the cache; lengths, the
    root-position and critical-extension rules, validity at ``at``, CA and path-length rules and
    the pinned-root comparison run every time.

    The link signatures not remembered are checked concurrently (the shared pool), then every
    result is read in chain order, interleaved with the CA checks exactly as a sequential walk
    does them: the error raised is the one the sequential walk raises, whatever the timing, and
    a link after the first failure is neither counted nor remembered.
    """
    at = require_aware(at)
    if not chain:
        raise ChainError(f"{what}: empty", reason="length")
    if len(chain) > MAX_CHAIN_CERTS:
        raise ChainError(
            f"{what}: {len(chain)} certificates; the limit is {MAX_CHAIN_CERTS}", reason="length"
        )
    if expected_length is not None and len(chain) != expected_length:
        raise ChainError(
            f"{what}: expected exactly {expected_length} certificates, got {len(chain)}",
            reason="length",
        )
    certs = (*chain, root)
    if ders is None:
        ders = tuple(certificate_der(c) for c in certs)
    _check_only_last_is_root(chain, ders, what)
    for cert in certs:
        _check_critical_extensions(cert, what)
    for cert in certs:
        _check_validity(cert, at, what)
    n = len(chain)
    # (child, issuer) positions in ``certs``: each link, then the pinned root's signature on
    # the top certificate unless the chain ends with a byte-identical copy of that root
    pairs = [(i, i + 1) for i in range(n - 1)]
    if ders[n - 1] != ders[n]:
        pairs.append((n - 1, n))
    todo = [_Link(certs[c], certs[p], ders[c], ders[p]) for c, p in pairs]
    if links is None:
        claims = [_Claim("own", Deferred(partial(link.check, what), leaf=True)) for link in todo]
    else:
        claims = [links.claim(link, at, what) for link in todo]
    own = [c.deferred for c in claims if c.kind == "own" and c.deferred is not None]
    for deferred in own[1:]:  # the first runs here, right away
        offer(deferred)
    settle([c.deferred for c in claims if c.deferred is not None])
    try:
        for (child, issuer), link, claim in zip(pairs, todo, claims, strict=True):
            if links is None:
                assert claim.deferred is not None
                claim.deferred.result()
            else:
                links.commit(claim, link, what)
            _check_is_ca(certs[issuer], child, what)
    finally:
        if links is not None:
            for claim in claims:
                links.release(claim)
    valid_from = max(c.not_valid_before_utc for c in certs)
    valid_until = min(c.not_valid_after_utc for c in certs)
    return VerifiedChain(certs=chain, root=root, valid_from=valid_from, valid_until=valid_until)


class _LinkCache:
    """Links (child DER, issuer DER) whose issuer name and signature checked out.

    Chains that share upper certificates (NVIDIA's driver and VBIOS RIM chains share the L3 and
    the CA; every GPU of a model shares the Identity and Provisioner links) then pay for each
    shared signature once. A link is remembered with the window in which both certificates are
    valid and answered only inside it; a failed link is never remembered. The key is the pair of
    exact DER encodings, so a hit is the very same signature over the very same bytes.

    A link being checked right now for one chain is not checked a second time for another
    chain verified at the same moment (the two RIM chains of one GPU): the second waits for
    that check and counts it as a hit when it passed; when it failed, the second checks the
    link itself, so its error names its own chain. Checking a signature does not depend on the
    verification time, only using a remembered answer does.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[bytes, bytes], tuple[datetime, datetime]] = OrderedDict()
        self._running: dict[tuple[bytes, bytes], Deferred[None]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def claim(self, link: _Link, at: datetime, what: str) -> _Claim:
        """A remembered answer valid at ``at``, a check already running, or a new check (not
        started: the caller runs it or offers it to the pool)."""
        key = (link.child_der, link.issuer_der)
        with self._lock:
            window = self._entries.get(key)
            if window is not None and window[0] <= at <= window[1]:
                self._entries.move_to_end(key)
                return _Claim("hit")
            running = self._running.get(key)
            if running is not None:
                return _Claim("shared", running)
            deferred: Deferred[None] = Deferred(partial(link.check, what), leaf=True)
            self._running[key] = deferred
            return _Claim("own", deferred, key)

    def commit(self, claim: _Claim, link: _Link, what: str) -> None:
        """Count the link, raise its ChainError, or remember it (called in chain order)."""
        if claim.kind == "hit":
            with self._lock:
                self.hits += 1
            return
        assert claim.deferred is not None
        if claim.kind == "shared":
            try:
                claim.deferred.result()
            except ChainError:
                pass  # checked again below, so the error names this chain
            else:
                with self._lock:
                    self.hits += 1
                # Remembered here too: the chain that started the check may have failed at an
                # earlier link and never commit this one (remembering twice is harmless).
                self._remember((link.child_der, link.issuer_der), link.window())
                return
            with self._lock:
                self.misses += 1
            link.check(what)
        else:
            with self._lock:
                self.misses += 1
            try:
                claim.deferred.result()
            finally:
                self.release(claim)
        self._remember((link.child_der, link.issuer_der), link.window())

    def release(self, claim: _Claim) -> None:
        """Forget a check this chain started (done, or no longer wanted): later chains either
        find its answer remembered or check the link themselves."""
        if claim.kind != "own" or claim.key is None:
            return
        with self._lock:
            if self._running.get(claim.key) is claim.deferred:
                del self._running[claim.key]

    def _remember(self, key: tuple[bytes, bytes], window: tuple[datetime, datetime]) -> None:
        with self._lock:
            self._entries[key] = window
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def check(
        self,
        child: x509.Certificate,
        issuer: x509.Certificate,
        *,
        child_der: bytes,
        issuer_der: bytes,
        at: datetime,
        what: str,
    ) -> None:
        """One link, in this thread: a remembered answer or a real check (then remembered)."""
        link = _Link(child, issuer, child_der, issuer_der)
        claim = self.claim(link, at, what)
        try:
            self.commit(claim, link, what)
        finally:
            self.release(claim)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


#: Links remembered per whole chain remembered: a chain has at most MAX_CHAIN_CERTS links, but
#: chains share most of theirs, so a few per chain is plenty.
LINKS_PER_CHAIN_ENTRY = 4


class ChainCache:
    """Remembers chains that verified, keyed by their exact bytes and the pinned root.

    A hit is only used when the new verification time lies inside the window in which every
    certificate of the chain is valid, so a cached answer is always the answer a full check would
    give. Failures are never cached. Bounded (LRU) and thread-safe.

    Below the whole-chain entries sits a per-link cache (child DER, issuer DER) -> validity
    window, so a chain seen for the first time still skips the signatures of links already
    verified in another chain (``link_hits`` / ``link_misses`` count them). Every other check of
    ``verify_chain`` still runs for such a chain.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, VerifiedChain] = OrderedDict()
        self._lock = threading.Lock()
        self._links = _LinkCache(max_entries * LINKS_PER_CHAIN_ENTRY)
        #: chains being verified right now, by key: the same chain asked for again meanwhile
        #: (the driver and VBIOS RIMs of one signer, both started ahead) waits for that answer
        self._verifying: dict[bytes, threading.Event] = {}
        self.hits = 0
        self.misses = 0

    @property
    def link_hits(self) -> int:
        """Link signatures answered from the link cache."""
        return self._links.hits

    @property
    def link_misses(self) -> int:
        """Link signatures checked for real (then remembered if they verified)."""
        return self._links.misses

    @staticmethod
    def _key(ders: Sequence[bytes], expected_length: int | None) -> bytes:
        h = hashlib.sha256(str(expected_length).encode())
        for der in ders:
            h.update(len(der).to_bytes(4, "big"))
            h.update(der)
        return h.digest()

    def verify(
        self,
        certs: Sequence[x509.Certificate],
        *,
        root: x509.Certificate,
        at: datetime,
        expected_length: int | None = None,
        what: str = "certificate chain",
    ) -> VerifiedChain:
        at = require_aware(at)
        chain = tuple(certs)
        ders = tuple(certificate_der(c) for c in (*chain, root))
        key = self._key(ders, expected_length)
        # The same chain asked for while it is being verified waits for that verification, then
        # looks again: a hit if it passed (as when asked after it, one after the other), its own
        # full check if it failed (failures are not remembered). So the answer, the error and
        # the counters never depend on which of two concurrent askers came first. The waiter
        # has claimed nothing yet, and the verifying thread can finish on its own (it runs any
        # of its link checks nobody started), so the wait always ends.
        while True:
            with self._lock:
                hit = self._entries.get(key)
                if hit is not None:
                    self._entries.move_to_end(key)
                if hit is not None and hit.valid_from <= at <= hit.valid_until:
                    self.hits += 1
                    return hit
                running = self._verifying.get(key)
                if running is None:
                    self.misses += 1
                    mine = self._verifying[key] = threading.Event()
                    break
            running.wait()
        try:
            result = _verify_chain(
                chain,
                root=root,
                at=at,
                expected_length=expected_length,
                what=what,
                links=self._links,
                ders=ders,
            )
            with self._lock:
                self._entries[key] = result
                self._entries.move_to_end(key)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
        finally:
            with self._lock:
                del self._verifying[key]
            mine.set()
        return result
