"""X.509 chain checks shared by every evidence kind (NVIDIA device and RIM chains, AMD, Intel).

Trust comes only from a pinned root passed in by the caller. A chain may end with a copy of that
root (NVIDIA device chains do) or with a certificate the root issued directly; either way the
last signature is checked with the *pinned* root's key, never with a key the device sent.
Validity is judged at the time given, never at the host clock.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from attest.errors import ChainError, InputError
from attest.timeutil import require_aware

#: A PEM chain file larger than this is not a certificate chain (NVIDIA's are under 5 KiB).
MAX_PEM_CHAIN_BYTES = 64 * 1024
#: No chain we accept is longer; a longer one is refused before any parsing work.
MAX_CHAIN_CERTS = 10
#: One DER certificate larger than this is refused (real ones are under 2 KiB).
MAX_CERT_BYTES = 16 * 1024

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


#: What cryptography raises for a certificate it cannot decode (names and extensions are
#: decoded lazily, so these can surface long after loading unless decoded up front).
_DECODE_ERRORS = (
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
    der = cert.public_bytes(Encoding.DER)
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
    except (*_DECODE_ERRORS, UnsupportedAlgorithm) as exc:
        raise InputError(f"malformed PEM certificate chain: {exc}") from exc


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse one certificate given as PEM or DER."""
    if len(data) > MAX_CERT_BYTES * 2:
        raise InputError(f"certificate is {len(data)} bytes; the limit is {MAX_CERT_BYTES * 2}")
    try:
        if _PEM_BEGIN in data:
            return _decode_eagerly(x509.load_pem_x509_certificate(data))
        return _decode_eagerly(x509.load_der_x509_certificate(data))
    except (*_DECODE_ERRORS, UnsupportedAlgorithm) as exc:
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


def _check_signed_by(child: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    if child.issuer != issuer.subject:
        raise ChainError(
            f"{what}: issuer of '{describe(child)}' is not '{describe(issuer)}'",
            reason="issuer_mismatch",
        )
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ChainError(
            f"{what}: signature on '{describe(child)}' does not verify with '{describe(issuer)}'",
            reason="bad_signature",
        ) from exc


def _check_is_ca(cert: x509.Certificate, below: int, what: str) -> None:
    """``below`` = number of CA certificates between this one and the leaf."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ChainError(
            f"{what}: issuer '{describe(cert)}' has no basicConstraints", reason="not_ca"
        ) from None
    if not bc.ca:
        raise ChainError(f"{what}: issuer '{describe(cert)}' is not a CA", reason="not_ca")
    if bc.path_length is not None and below > bc.path_length:
        raise ChainError(
            f"{what}: '{describe(cert)}' allows {bc.path_length} CAs below it, chain has {below}",
            reason="path_length",
        )
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
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

    Checks, in order: length; every certificate (and the root) valid at ``at``; each link's
    issuer name and signature; every issuer is a CA allowed to sign at that depth; the top of the
    chain is the pinned root byte for byte, or was issued by it.
    """
    return _verify_chain(
        tuple(certs), root=root, at=at, expected_length=expected_length, what=what, links=None
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


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
    signature and issuer-name check of a link is ever taken from the cache; lengths, validity at
    ``at``, CA and path-length rules and the pinned-root comparison run every time.
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
    for cert in (*chain, root):
        _check_validity(cert, at, what)
    if ders is None:
        ders = tuple(_der(c) for c in (*chain, root))

    def signed_by(child: int, issuer: int) -> None:
        issuer_cert = root if issuer == len(chain) else chain[issuer]
        if links is None:
            _check_signed_by(chain[child], issuer_cert, what)
        else:
            links.check(
                chain[child],
                issuer_cert,
                child_der=ders[child],
                issuer_der=ders[issuer],
                at=at,
                what=what,
            )

    for i in range(len(chain) - 1):
        signed_by(i, i + 1)
        _check_is_ca(chain[i + 1], i, what)
    if ders[len(chain) - 1] != ders[len(chain)]:
        signed_by(len(chain) - 1, len(chain))
        _check_is_ca(root, len(chain) - 1, what)
    valid_from = max(c.not_valid_before_utc for c in (*chain, root))
    valid_until = min(c.not_valid_after_utc for c in (*chain, root))
    return VerifiedChain(certs=chain, root=root, valid_from=valid_from, valid_until=valid_until)


class _LinkCache:
    """Links (child DER, issuer DER) whose issuer name and signature checked out.

    Chains that share upper certificates (NVIDIA's driver and VBIOS RIM chains share the L3 and
    the CA; every GPU of a model shares the Identity and Provisioner links) then pay for each
    shared signature once. A link is remembered with the window in which both certificates are
    valid and answered only inside it; a failed link is never remembered. The key is the pair of
    exact DER encodings, so a hit is the very same signature over the very same bytes.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[bytes, bytes], tuple[datetime, datetime]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

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
        key = (child_der, issuer_der)
        with self._lock:
            window = self._entries.get(key)
            if window is not None and window[0] <= at <= window[1]:
                self._entries.move_to_end(key)
                self.hits += 1
                return
            self.misses += 1
        _check_signed_by(child, issuer, what)
        window = (
            max(child.not_valid_before_utc, issuer.not_valid_before_utc),
            min(child.not_valid_after_utc, issuer.not_valid_after_utc),
        )
        with self._lock:
            self._entries[key] = window
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

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
        ders = tuple(_der(c) for c in (*chain, root))
        key = self._key(ders, expected_length)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
            if hit is not None and hit.valid_from <= at <= hit.valid_until:
                self.hits += 1
                return hit
            self.misses += 1
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
        return result
