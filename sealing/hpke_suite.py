"""The HPKE suites lessee uses for key release and token-stream requests (RFC 9180, base mode).

One small typed wrapper over ``cryptography.hazmat.primitives.hpke`` so that key release (the
broker sealing a model's data key to the enclave) and token streams (a client sealing a request to
the enclave) agree on suites, key encodings and error behaviour.

What cryptography 50 exposes, and how this module designs around it:

* ``Suite.encrypt(plaintext, public_key, info)`` / ``Suite.decrypt(blob, private_key, info)``:
  single-shot base mode only, returning ``enc || ct``. The encapsulation randomness cannot be
  injected, so HPKE ciphertexts are never deterministic (KATs open fixed ciphertexts instead).
* No public ``aad`` argument, no exporter, no multi-message context. RFC 9180 §8.1 tells
  single-shot users to put auxiliary authenticated data in ``info``; :func:`seal` therefore binds
  ``aad`` through the info: ``hpke_info = I2OSP(len(info), 2) || info || aad``. The length prefix
  makes the split unambiguous, and the key schedule hashes ``hpke_info`` (``info_hash``), so a
  changed ``aad`` yields a different key and the open fails exactly as an AEAD ``aad`` would.
  (A private ``_encrypt_with_aad`` exists in the binding; private API can vanish in any release,
  so lessee does not use it outside tests.)
* ``MLKEM768X25519PublicKey`` has no byte encoding. The key's bytes are kept beside the key at
  generation or decoding time, in the X-Wing order ``pk_mlkem(1184) || pk_x25519(32)`` that the
  KEM itself uses (the test suite checks that cryptography's KEM is X-Wing, kem_id 0x647a).

Wire ids (:class:`SuiteId`) are lessee's own one-byte codes; the RFC 9180 / IANA ids each stands
for are listed in :data:`SUITE_PARAMS` and in ``docs/formats/token-stream.md``.
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from attest.errors import InputError, ParseError, VerificationError

#: Randomness is an argument everywhere in ``sealing``: ``rng(n)`` returns ``n`` random bytes.
#: Production passes ``os.urandom``; known-answer generators pass a seeded function.
Rng = Callable[[int], bytes]


class SuiteId(enum.IntEnum):
    """lessee's stable one-byte wire id of an HPKE suite (KEM, KDF, AEAD). Never renumber."""

    #: X-Wing (ML-KEM-768 + X25519, kem_id 0x647a), HKDF-SHA256, AES-256-GCM. The default: a
    #: recorded request or key release must stay confidential against a future quantum computer.
    MLKEM768_X25519_SHA256_AES256GCM = 0x01
    #: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. Classical option for clients that
    #: cannot do ML-KEM; covered by the RFC 9180 test vectors.
    X25519_SHA256_AES256GCM = 0x02


DEFAULT_SUITE = SuiteId.MLKEM768_X25519_SHA256_AES256GCM


@dataclass(frozen=True)
class SuiteParams:
    """Sizes and RFC 9180 ids of one suite."""

    kem_id: int
    kdf_id: int
    aead_id: int
    #: Length of the raw KEM public key (the bytes after the suite tag in an encoded key).
    public_key_len: int
    #: Length of the encapsulated key ``enc`` that prefixes every sealed blob.
    enc_len: int
    #: Length of the seed :func:`generate_keypair` draws from the RNG.
    seed_len: int


#: ML-KEM-768 public key, seed (d || z) and X25519 key sizes (FIPS 203, RFC 7748).
_MLKEM768_PK_LEN = 1184
_MLKEM768_SEED_LEN = 64
_X25519_LEN = 32
#: AES-256-GCM tag length: every sealed blob is ``enc || ct`` with ``len(ct) = len(pt) + 16``.
AEAD_TAG_LEN = 16

SUITE_PARAMS: dict[SuiteId, SuiteParams] = {
    SuiteId.MLKEM768_X25519_SHA256_AES256GCM: SuiteParams(
        kem_id=0x647A,
        kdf_id=0x0001,
        aead_id=0x0002,
        public_key_len=_MLKEM768_PK_LEN + _X25519_LEN,
        enc_len=hpke.KEM.MLKEM768_X25519.enc_length(),
        seed_len=_MLKEM768_SEED_LEN + _X25519_LEN,
    ),
    SuiteId.X25519_SHA256_AES256GCM: SuiteParams(
        kem_id=0x0020,
        kdf_id=0x0001,
        aead_id=0x0002,
        public_key_len=_X25519_LEN,
        enc_len=hpke.KEM.X25519.enc_length(),
        seed_len=_X25519_LEN,
    ),
}

_SUITES: dict[SuiteId, hpke.Suite] = {
    SuiteId.MLKEM768_X25519_SHA256_AES256GCM: hpke.Suite(
        hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
    ),
    SuiteId.X25519_SHA256_AES256GCM: hpke.Suite(
        hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
    ),
}

#: Bound on ``info`` and on ``aad`` (each). Ours are under 200 bytes; the bound keeps the key
#: schedule's hashing cost on attacker-chosen input small and fits the 2-byte length prefix.
MAX_INFO_LEN = 4096
MAX_AAD_LEN = 4096
#: Bound on a sealed blob's plaintext: a key release is 32 bytes, a token-stream request at most
#: ``sealing.stream.request.MAX_REQUEST_PLAINTEXT`` (1 MiB); 4 MiB leaves room for both and still
#: refuses a multi-gigabyte blob before any decryption work.
MAX_PLAINTEXT_LEN = 4 * 1024 * 1024


class HpkeOpenError(VerificationError):
    """A sealed blob did not open. One opaque error for every cause (no decryption oracle)."""

    def __init__(self) -> None:
        super().__init__("HPKE open failed", reason="hpke_open_failed")


class HpkeSealError(InputError):
    """The recipient public key cannot be sealed to (the KEM refused it)."""

    def __init__(self) -> None:
        super().__init__("HPKE seal failed: the recipient public key is not usable")


def suite_params(suite: SuiteId) -> SuiteParams:
    """The sizes and RFC 9180 ids of ``suite``."""
    return SUITE_PARAMS[suite]


def parse_suite_id(value: int, *, offset: int | None = None) -> SuiteId:
    """Map a wire byte to a :class:`SuiteId`, refusing unknown values with a ``ParseError``."""
    try:
        return SuiteId(value)
    except ValueError:
        raise ParseError(
            f"unknown HPKE suite id 0x{value:02x}", offset=offset, field="suite"
        ) from None


_PublicKeyObj = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey

_P25519 = 2**255 - 19
#: Every 255-bit encoding of an X25519 point of small order (1, 2, 4 or 8), as u-coordinates
#: with the unused top bit cleared: 0, 1, the two u of order 8, p - 1, and the non-canonical
#: p and p + 1 (= 0 and 1); larger non-canonical forms of the others do not fit in 255 bits.
#: The same list libsodium blocks. A set lookup, not a probe DH (~31 us per decode, on every
#: Attest and every key bundle); ``tests/stream/test_hpke_suite.py`` checks each entry with a
#: real DH.
_SMALL_ORDER_U = frozenset(
    {
        0,
        1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        _P25519 - 1,
        _P25519,
        _P25519 + 1,
    }
)
_U_MASK = (1 << 255) - 1


def _refuse_small_order(raw: bytes) -> None:
    """Refuse an X25519 public key of small order (e.g. 32 zero bytes), or not in its one
    canonical encoding.

    Every DH with a small-order key gives the all-zero secret, which RFC 7748 section 6.1 says
    to refuse and ``cryptography`` refuses only later, inside ``seal``, with a bare
    ``ValueError``. Checking at decode time keeps the failure where the untrusted bytes arrive,
    as a ``ParseError``. A key with bit 255 set or a u-coordinate of p or more is the same DH
    key as its reduced form but another byte string, hence another key id, and HPKE hashes the
    recipient key as given, so a blob sealed to it opens with nothing: one key, one encoding.
    """
    u = int.from_bytes(raw, "little")
    if u & _U_MASK in _SMALL_ORDER_U:
        raise ParseError("X25519 public key has small order", field="public_key")
    if u >= _P25519:
        raise ParseError(
            "X25519 public key is not canonical (bit 255 set or u >= p)", field="public_key"
        )


_PrivateKeyObj = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


@dataclass(frozen=True)
class HpkePublicKey:
    """A recipient public key with its suite; ``raw`` is the KEM's own encoding.

    The encoded form (``suite byte || raw``) is what a key bundle carries and what
    :attr:`key_id` hashes, so a key id names one key *and* the suite it may be used with.
    """

    suite: SuiteId
    raw: bytes
    _key: _PublicKeyObj = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, suite: SuiteId, raw: bytes) -> HpkePublicKey:
        """Decode a raw KEM public key for ``suite``; wrong length or invalid key: ``ParseError``."""
        params = SUITE_PARAMS[suite]
        raw = bytes(raw)
        if len(raw) != params.public_key_len:
            raise ParseError(
                f"public key is {len(raw)} bytes, suite {suite.name} needs {params.public_key_len}",
                field="public_key",
            )
        try:
            xpk = x25519.X25519PublicKey.from_public_bytes(raw[-_X25519_LEN:])
            if suite is SuiteId.X25519_SHA256_AES256GCM:
                key: _PublicKeyObj = xpk
            else:
                key = hpke.MLKEM768X25519PublicKey(
                    mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PK_LEN]), xpk
                )
        except ValueError:
            # ML-KEM's encapsulation-key check (FIPS 203 §7.2 modulus check) failed.
            raise ParseError("public key is not a valid KEM key", field="public_key") from None
        # Both suites: the hybrid's X25519 half too, since seal() fails on it just the same.
        _refuse_small_order(raw[-_X25519_LEN:])
        return cls(suite, raw, key)

    @classmethod
    def decode(cls, data: bytes) -> HpkePublicKey:
        """Decode ``suite byte || raw`` strictly (known suite, exact length)."""
        data = bytes(data)
        if not data:
            raise ParseError("empty public key", offset=0, field="suite")
        return cls.from_raw(parse_suite_id(data[0], offset=0), data[1:])

    def encode(self) -> bytes:
        """``suite byte || raw``: the canonical encoding that :attr:`key_id` hashes."""
        return bytes([self.suite]) + self.raw

    @property
    def key_id(self) -> bytes:
        """SHA-256 of the encoded key: binds requests to this exact key and suite."""
        return hashlib.sha256(self.encode()).digest()


class HpkePrivateKey:
    """A recipient private key. Deliberately not a dataclass: no repr, no equality, no pickling
    of the secret by accident; it never leaves the process that made it."""

    __slots__ = ("_key", "public_key", "suite")

    def __init__(self, suite: SuiteId, key: _PrivateKeyObj, public_key: HpkePublicKey) -> None:
        self.suite = suite
        self._key = key
        self.public_key = public_key

    def __repr__(self) -> str:
        return f"HpkePrivateKey(suite={self.suite.name}, key_id={self.public_key.key_id.hex()})"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("HpkePrivateKey cannot be pickled")


def generate_keypair(suite: SuiteId = DEFAULT_SUITE, *, rng: Rng = os.urandom) -> HpkePrivateKey:
    """Make a key pair from ``rng``: deterministic for a seeded ``rng`` (known-answer tests),
    fresh for ``os.urandom``.

    Seeds: X25519 draws 32 bytes (the scalar, clamped by X25519 itself); the hybrid draws the
    64-byte ML-KEM-768 seed ``d || z`` (FIPS 203) then the 32-byte X25519 scalar. This is not
    X-Wing's 32-byte seed expansion; the private key never leaves the enclave, so only the
    public encoding has to interoperate.
    """
    params = SUITE_PARAMS[suite]
    seed = rng(params.seed_len)
    if len(seed) != params.seed_len:
        raise ValueError(f"rng returned {len(seed)} bytes, wanted {params.seed_len}")
    if suite is SuiteId.X25519_SHA256_AES256GCM:
        xsk = x25519.X25519PrivateKey.from_private_bytes(seed)
        raw = xsk.public_key().public_bytes_raw()
        return HpkePrivateKey(
            suite, xsk, HpkePublicKey(suite, raw, x25519.X25519PublicKey.from_public_bytes(raw))
        )
    msk = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed[:_MLKEM768_SEED_LEN])
    xsk = x25519.X25519PrivateKey.from_private_bytes(seed[_MLKEM768_SEED_LEN:])
    sk = hpke.MLKEM768X25519PrivateKey(msk, xsk)
    raw = msk.public_key().public_bytes_raw() + xsk.public_key().public_bytes_raw()
    return HpkePrivateKey(suite, sk, HpkePublicKey(suite, raw, sk.public_key()))


def bound_info(info: bytes, aad: bytes) -> bytes:
    """The ``info`` handed to the HPKE key schedule: ``I2OSP(len(info), 2) || info || aad``.

    Public so that another implementation (or a test against the RFC 9180 key schedule) can
    reproduce it byte for byte. An ``info`` or ``aad`` over its bound is the caller's input out
    of range: ``InputError`` (the CLI's exit 2), not a bare ``ValueError``.
    """
    if len(info) > MAX_INFO_LEN:
        raise InputError(f"info is {len(info)} bytes, the bound is {MAX_INFO_LEN}")
    if len(aad) > MAX_AAD_LEN:
        raise InputError(f"aad is {len(aad)} bytes, the bound is {MAX_AAD_LEN}")
    return struct.pack(">H", len(info)) + info + aad


def seal(pk: HpkePublicKey, info: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """HPKE base-mode single-shot seal to ``pk``: returns ``enc || ct``.

    ``info`` names the protocol and context; ``aad`` is authenticated but not encrypted. Both
    are bound through the key schedule (see the module docstring). Randomness comes from the
    library's own RNG: HPKE encapsulation is never deterministic here. An ``info``, ``aad`` or
    ``plaintext`` over its bound is an ``InputError``.
    """
    if len(plaintext) > MAX_PLAINTEXT_LEN:
        raise InputError(f"plaintext is {len(plaintext)} bytes, the bound is {MAX_PLAINTEXT_LEN}")
    hinfo = bound_info(info, aad)
    try:
        return _SUITES[pk.suite].encrypt(bytes(plaintext), pk._key, info=hinfo)
    except ValueError:
        # The library refuses the recipient key during encapsulation (an all-zero X25519
        # secret). ``from_raw`` already refuses such keys; this keeps any other path typed.
        raise HpkeSealError() from None


def open(sk: HpkePrivateKey, info: bytes, aad: bytes, blob: bytes) -> bytes:
    """Open ``enc || ct`` sealed to ``sk``'s public key with the same ``info`` and ``aad``.

    Every failure (wrong key, suite, info or aad; any flipped, missing or extra byte; a blob too
    short or too long) raises the same :class:`HpkeOpenError`. So does an ``info`` or ``aad``
    over its bound: :func:`seal` refuses those, so nothing sealed under them exists to open.
    """
    params = SUITE_PARAMS[sk.suite]
    if not (
        params.enc_len + AEAD_TAG_LEN
        <= len(blob)
        <= params.enc_len + AEAD_TAG_LEN + MAX_PLAINTEXT_LEN
    ):
        raise HpkeOpenError()
    try:
        hinfo = bound_info(info, aad)
        return _SUITES[sk.suite].decrypt(bytes(blob), sk._key, info=hinfo)
    except (InvalidTag, ValueError, InputError):
        raise HpkeOpenError() from None
