"""Attestation results as EAR (draft-ietf-rats-ear) JWTs, signed with ES256 or EdDSA.

Why EAR: it is the IETF RATS format for "what the verifier concluded", with per-component
submodules (``cpu0``, ``gpu0``, ...) and the AR4SI trustworthiness vector, so relying parties
that already speak it (Veraison, Trustee) can read our results. Why not NVIDIA's token format:
NVIDIA's local verifier signs its tokens with HS256 and the literal key ``secret``.

Rules this module enforces:

* Signing keys are asymmetric (P-256 -> ES256, Ed25519 -> EdDSA). ``none`` and every HMAC
  algorithm are refused on verification.
* Verification pins the verifier's public key. A key carried in the token header (``jwk``,
  ``x5c``, ``kid``) is never used to decide validity.
* Tokens are bounded in size and parsed strictly (duplicate JSON keys refused).
* lessee's own profile additionally requires ``exp``, ``eat_nonce``, the attested enclave key
  and the policy digest; foreign profiles (e.g. Veraison's) are verified for signature and shape.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from attest.errors import InputError, ParseError, VerificationError
from attest.jsonutil import MAX_JSON_DEPTH, json_depth, object_without_duplicates
from attest.timeutil import require_aware

#: lessee's EAR profile. Results under it carry the enclave key, nonce, policy digest and expiry.
LESSEE_PROFILE = "tag:github.com,2026:lessee/ear/v1"
#: The claim (in ``AttestationResult.extra``) in which the broker names the model a result was
#: issued for: the broker's release, the client's ``model_id`` check and the audit replay read it.
MODEL_ID_CLAIM = "ear.lessee.model-id"
VERAISON_PROFILE = "tag:github.com,2023:veraison/ear"
#: An EAR for one CPU + 8 GPUs with NVIDIA claims is ~10 KiB; 256 KiB leaves room, bounds work.
MAX_TOKEN_BYTES = 256 * 1024
#: Clock skew tolerated between the broker that issued a result and the party checking it.
MAX_CLOCK_SKEW_SECONDS = 60

TRUST_CLAIMS = (
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
)


class EarError(VerificationError):
    """A result token failed verification (signature, algorithm, expiry, nonce, profile)."""


class Status(StrEnum):
    """AR4SI trust tiers, in increasing order of badness."""

    NONE = "none"
    AFFIRMING = "affirming"
    WARNING = "warning"
    CONTRAINDICATED = "contraindicated"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @staticmethod
    def worst(statuses: list[Status]) -> Status:
        """The overall status of several submodules: the worst one wins."""
        return max(statuses, key=lambda s: s.rank, default=Status.NONE)


_RANK = {Status.AFFIRMING: 0, Status.NONE: 1, Status.WARNING: 2, Status.CONTRAINDICATED: 3}

#: AR4SI claim values: 2 = affirming, 32 = warning, 96 = contraindicated, 0 = no claim.
AFFIRMING_VALUE = 2
WARNING_VALUE = 32
CONTRAINDICATED_VALUE = 96


def tier_of(value: int) -> Status:
    """Map an AR4SI trustworthiness claim value (-128..127) to its tier."""
    if -1 <= value <= 1:
        return Status.NONE
    if 2 <= value <= 31:
        return Status.AFFIRMING
    if 32 <= value <= 95 or -32 <= value <= -2:
        return Status.WARNING
    return Status.CONTRAINDICATED


@dataclass(frozen=True)
class Submodule:
    """One appraised component (``cpu0``, ``gpu0``, ``switch0``)."""

    status: Status
    trust_vector: Mapping[str, int] = field(default_factory=dict)
    policy_id: str | None = None
    #: Extra claims, e.g. ``x-nvidia-*`` claims for GPUs (kept verbatim).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ear.status": self.status.value}
        if self.trust_vector:
            out["ear.trustworthiness-vector"] = dict(self.trust_vector)
        if self.policy_id is not None:
            out["ear.appraisal-policy-id"] = self.policy_id
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class AttestationResult:
    """The claims of an EAR. ``issued_at``/``expires_at`` are POSIX seconds."""

    submods: Mapping[str, Submodule]
    issued_at: int
    verifier_build: str
    verifier_developer: str = "lessee"
    profile: str = LESSEE_PROFILE
    expires_at: int | None = None
    nonce: bytes | None = None
    #: The enclave public key this result attests (suite-tagged encoding, see sealing/).
    enclave_key: bytes | None = None
    policy_digest: str | None = None
    result_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return Status.worst([s.status for s in self.submods.values()])

    def to_claims(self) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "eat_profile": self.profile,
            "iat": self.issued_at,
            "ear.verifier-id": {"developer": self.verifier_developer, "build": self.verifier_build},
            "submods": {name: sub.to_json() for name, sub in self.submods.items()},
        }
        if self.expires_at is not None:
            claims["exp"] = self.expires_at
        if self.nonce is not None:
            claims["eat_nonce"] = _b64u(self.nonce)
        if self.enclave_key is not None:
            claims["ear.lessee.enclave-key"] = _b64u(self.enclave_key)
        if self.policy_digest is not None:
            claims["ear.lessee.policy-digest"] = self.policy_digest
        if self.result_id is not None:
            claims["jti"] = self.result_id
        claims.update(self.extra)
        return claims


SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64U_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64U_VALUE = {c: i for i, c in enumerate(_B64U_ALPHABET)}
_B64U_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
#: Bits of the last character that carry no data, by ``len(text) % 4`` (RFC 4648 section 3.5:
#: canonical encoders set them to zero).
_SPARE_BITS = {0: 0, 2: 0x0F, 3: 0x03}


def _unb64u(text: str, what: str) -> bytes:
    """Decode unpadded base64url, accepting only the canonical text for the decoded bytes.

    Every other spelling is refused: padding, the standard alphabet's ``+``/``/``, whitespace
    or any other character outside the alphabet (``strict_mode`` decoding), an impossible length
    (``len % 4 == 1``), and set spare bits in the last character, which would give a second
    string for the same bytes. That is exactly the set of texts for which re-encoding the
    decoded bytes gives the text back, checked here without encoding again (issue #5).
    """
    if not isinstance(text, str) or any(c in text for c in "=+/ \n"):
        raise ParseError(f"{what} is not unpadded base64url", field=what)
    spare = _SPARE_BITS.get(len(text) % 4)
    try:
        if spare is None:
            raise ValueError("impossible length")
        data = binascii.a2b_base64(
            text.encode("ascii").translate(_B64U_TO_STANDARD) + b"=" * (-len(text) % 4),
            strict_mode=True,
        )
    except (binascii.Error, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise ParseError(f"{what} is not base64url", field=what) from exc
    if spare and _B64U_VALUE[text[-1]] & spare:  # spare bits set: another string, same bytes
        raise ParseError(f"{what} is not canonical base64url", field=what)
    return data


#: The compact-JWS alphabet: base64url and the two dots (``is_compact_jws``).
_JWS_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


def is_compact_jws(value: str) -> bool:
    r"""``value`` is three non-empty base64url segments joined by dots and nothing else.

    The language of ``^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z`` (tested against
    that pattern), checked in C at memory speed: the regex walks a token (~8 KiB for one GPU,
    ~50 KiB for eight) one character at a time, ~4x slower. Such a token is its own JSON
    string body. ``verify_ear`` admits nothing else (no surrounding whitespace either), so the
    exact text a broker acted on is the text its log can hold: a padded copy of a genuine token
    once passed ReleaseKey's checks, spent the result, and then could not be logged."""
    if not value.isascii():
        return False
    raw = value.encode("ascii")
    if raw.translate(None, _JWS_ALPHABET):
        return False
    first = raw.find(b".")
    second = raw.find(b".", first + 1)
    return 0 < first < second - 1 and second < len(raw) - 1 and raw.find(b".", second + 1) < 0


#: The order of the P-256 group (SEC 2), for low-S signatures.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _alg_for(key: SigningKey | VerifyingKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise InputError(f"unsupported EAR key curve {key.curve.name}; use P-256 or Ed25519")


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


@lru_cache(maxsize=16)
def _encoded_header(alg: str, kid: str | None) -> str:
    """The protected header's base64url text; one per (algorithm, key id), so made once."""
    header: dict[str, str] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return _b64u(_canonical_json(header))


def issue_ear(result: AttestationResult, key: SigningKey, *, kid: str | None = None) -> str:
    """Sign ``result`` as a compact JWS. ``kid`` only helps the reader pick its pinned key."""
    alg = _alg_for(key)
    signing_input = (
        _encoded_header(alg, kid) + "." + _b64u(_canonical_json(result.to_claims()))
    ).encode("ascii")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        sig = key.sign(signing_input)
    else:
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        # Low S: (r, n - s) verifies too, so a token has a second spelling; issuing only the
        # low one makes every token this code signs the canonical one. (Readers accept both:
        # tokens already issued and logged are either.)
        s = min(s, _P256_ORDER - s)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return signing_input.decode("ascii") + "." + _b64u(sig)


class _DuplicateKey(Exception):  # noqa: N818 (internal signal, never escapes _strict_object)
    def __init__(self, key: str) -> None:
        self.key = key


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # ``object_without_duplicates`` inlined for the common case (one Python call per JSON
    # object instead of two: ~24 objects per one-GPU result): ``dict()`` keeps the last of equal
    # keys, so fewer entries than pairs means a duplicate, which that function then names.
    out = dict(pairs)
    if len(out) != len(pairs):
        _, duplicate = object_without_duplicates(pairs)
        raise _DuplicateKey(duplicate or "")
    return out


#: One strict decoder (``json.loads`` with a hook builds a decoder per call; it keeps no state).
_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_no_dupes)


def _strict_object(text: bytes, what: str, *, check_depth: bool) -> dict[str, Any]:
    """``text`` as a JSON object, or ``ParseError``; never any other exception.

    The protected header is parsed before the signature is checked, so it holds bytes from
    anyone who can reach ``verify_ear`` (the broker's ReleaseKey): for it (``check_depth``)
    hostile nesting is refused by ``json_depth`` before the recursive parser sees it. The
    payload is parsed only once the pinned key's signature over it verified, and can be large
    (findings for many devices): there ``RecursionError`` is the bound. ``ValueError`` -- an
    integer past Python's digit limit -- and ``RecursionError`` are caught either way, so such a
    token is a client error, not an internal one.
    """
    try:
        decoded = text.decode("utf-8")
        if decoded.startswith("\ufeff"):  # ``json.loads`` refuses a BOM; so do we
            raise json.JSONDecodeError("Unexpected UTF-8 BOM", decoded, 0)
        if check_depth and json_depth(decoded) > MAX_JSON_DEPTH:
            raise ParseError(f"{what} nested deeper than {MAX_JSON_DEPTH} levels", field=what)
        value = _STRICT_DECODER.decode(decoded)
    except _DuplicateKey as dup:
        raise ParseError(f"duplicate key {dup.key!r} in {what}", field=what) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParseError(f"{what} is not JSON", field=what) from exc
    except (ValueError, RecursionError) as exc:  # digit limit; recursion despite the bound
        # Python's own text ends in advice to raise the digit limit, which is not the caller's
        # to take: keep only what was wrong.
        reason = str(exc).split(";", 1)[0]
        raise ParseError(f"{what} is not acceptable JSON: {reason}", field=what) from None
    if not isinstance(value, dict):
        raise ParseError(f"{what} is not a JSON object", field=what)
    return value


def _verify_signature(alg: str, key: VerifyingKey, signing_input: bytes, sig: bytes) -> None:
    try:
        if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, signing_input)
            return
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(sig) != 64:
                raise EarError("ES256 signature must be 64 bytes", reason="ear_signature")
            der = encode_dss_signature(
                int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            )
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            return
    except InvalidSignature as exc:
        raise EarError(
            "attestation result signature does not verify", reason="ear_signature"
        ) from exc
    raise EarError(f"token algorithm {alg} does not match the pinned key", reason="ear_algorithm")


def _parse_submods(raw: Any) -> dict[str, Submodule]:
    if not isinstance(raw, dict) or not raw:
        raise ParseError("EAR needs a non-empty 'submods' object", field="submods")
    out: dict[str, Submodule] = {}
    for name, body in raw.items():
        if not isinstance(body, dict):
            raise ParseError(f"submodule {name!r} is not an object", field="submods")
        try:
            status = Status(str(body.get("ear.status")))
        except ValueError:
            raise ParseError(
                f"submodule {name!r} has no valid ear.status", field="submods"
            ) from None
        tv = body.get("ear.trustworthiness-vector", {})
        if not isinstance(tv, dict) or any(
            k not in TRUST_CLAIMS
            or not isinstance(v, int)
            or isinstance(v, bool)
            or not -128 <= v <= 127
            for k, v in tv.items()
        ):
            raise ParseError(
                f"submodule {name!r} has a malformed trustworthiness vector", field="submods"
            )
        policy_id = body.get("ear.appraisal-policy-id")
        if policy_id is not None and not isinstance(policy_id, str):
            raise ParseError(f"submodule {name!r}: policy id is not a string", field="submods")
        extra = {
            k: v
            for k, v in body.items()
            if k not in ("ear.status", "ear.trustworthiness-vector", "ear.appraisal-policy-id")
        }
        out[name] = Submodule(status=status, trust_vector=tv, policy_id=policy_id, extra=extra)
    return out


def _int_claim(claims: Mapping[str, Any], name: str, required: bool) -> int | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise ParseError(f"EAR lacks '{name}'", field=name)
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ParseError(f"EAR '{name}' is not a non-negative integer", field=name)
    return value


#: Protected headers kept parsed, by their base64url text, and the longest text kept (ours is
#: 36 characters; a header with a ``kid`` a few dozen more): bounds what a stream of odd
#: tokens can make a long-lived verifier hold.
_HEADER_CACHE_SIZE = 64
_MAX_CACHED_HEADER_CHARS = 512


def _header_fields(encoded: str) -> tuple[Any, bool]:
    """``alg`` and whether ``crit`` is present, from the header's base64url text."""
    header = _strict_object(_unb64u(encoded, "header"), "header", check_depth=True)
    return header.get("alg"), "crit" in header


#: One issuer signs every token with the same header, so its decode and strict parse happen
#: once per distinct text; a malformed header raises, and exceptions are not cached.
_cached_header_fields = lru_cache(maxsize=_HEADER_CACHE_SIZE)(_header_fields)

#: Claims ``AttestationResult`` has fields for; every other claim goes to ``extra``.
_KNOWN_CLAIMS = frozenset(
    {
        "eat_profile",
        "iat",
        "exp",
        "ear.verifier-id",
        "submods",
        "eat_nonce",
        "ear.lessee.enclave-key",
        "ear.lessee.policy-digest",
        "jti",
    }
)


def verify_ear(
    token: str,
    key: VerifyingKey,
    *,
    at: datetime,
    expected_nonce: bytes | None = None,
    expected_enclave_key: bytes | None = None,
    require_lessee_profile: bool = True,
    allow_expired: bool = False,
) -> AttestationResult:
    """Verify ``token`` with the pinned ``key`` as of ``at`` and return its claims.

    Raises ``ParseError`` for a malformed token and ``EarError`` for a failed check.

    ``allow_expired``: return the claims of a token that passes every check but expiry (the
    signature is checked first, so they are still the issuer's own). Only for callers that
    must read a result *as evidence* after it lapsed -- the auditor cross-checking a late
    release, the broker logging its refusal of one -- and that judge ``expires_at``
    themselves; never for deciding whether a result may be relied on. Every other check
    (algorithm, signature, ``iat`` in the future, profile, required claims, nonce, key) holds.
    """
    at = require_aware(at)
    if len(token) > MAX_TOKEN_BYTES:
        raise ParseError(f"token larger than {MAX_TOKEN_BYTES} bytes")
    if not token.isascii():
        raise ParseError("token is not ASCII (a compact JWS is base64url text)")
    if not is_compact_jws(token):
        raise ParseError(
            "not a compact JWS (need header.payload.signature: three base64url segments "
            "and nothing else, no whitespace)"
        )
    parts = token.split(".")
    alg, crit = (
        _cached_header_fields(parts[0])
        if len(parts[0]) <= _MAX_CACHED_HEADER_CHARS
        else _header_fields(parts[0])
    )
    if alg not in ("ES256", "EdDSA"):
        raise EarError(
            f"token algorithm {alg!r} is not allowed (ES256, EdDSA only)", reason="ear_algorithm"
        )
    if crit:
        raise EarError(
            "token has critical header parameters we do not understand", reason="ear_crit"
        )
    _verify_signature(
        alg, key, f"{parts[0]}.{parts[1]}".encode("ascii"), _unb64u(parts[2], "signature")
    )
    payload = _unb64u(parts[1], "payload")
    claims = _strict_object(payload, "payload", check_depth=False)

    profile = claims.get("eat_profile")
    if not isinstance(profile, str):
        raise ParseError("EAR lacks 'eat_profile'", field="eat_profile")
    lessee = profile == LESSEE_PROFILE
    if require_lessee_profile and not lessee:
        raise EarError(f"unexpected EAR profile {profile!r}", reason="ear_profile")
    issued_at = _int_claim(claims, "iat", required=True)
    expires_at = _int_claim(claims, "exp", required=lessee)
    assert issued_at is not None
    now = int(at.timestamp())
    if issued_at > now + MAX_CLOCK_SKEW_SECONDS:
        raise EarError("attestation result issued in the future", reason="ear_not_yet_valid")
    if not allow_expired and expires_at is not None and now > expires_at + MAX_CLOCK_SKEW_SECONDS:
        raise EarError("attestation result has expired", reason="ear_expired")
    vid = claims.get("ear.verifier-id")
    if (
        not isinstance(vid, dict)
        or not isinstance(vid.get("build"), str)
        or not isinstance(vid.get("developer"), str)
    ):
        raise ParseError("EAR lacks a valid 'ear.verifier-id'", field="ear.verifier-id")
    nonce = _unb64u(claims["eat_nonce"], "eat_nonce") if "eat_nonce" in claims else None
    enclave_key = (
        _unb64u(claims["ear.lessee.enclave-key"], "ear.lessee.enclave-key")
        if "ear.lessee.enclave-key" in claims
        else None
    )
    policy_digest = claims.get("ear.lessee.policy-digest")
    result_id = claims.get("jti")
    if lessee and (
        nonce is None
        or enclave_key is None
        or not isinstance(policy_digest, str)
        or not isinstance(result_id, str)
    ):
        raise ParseError(
            "lessee EAR needs eat_nonce, ear.lessee.enclave-key, ear.lessee.policy-digest and jti"
        )
    if expected_nonce is not None and nonce != expected_nonce:
        raise EarError("attestation result is for another nonce", reason="ear_nonce")
    if expected_enclave_key is not None and enclave_key != expected_enclave_key:
        raise EarError("attestation result attests another enclave key", reason="ear_key")
    return AttestationResult(
        submods=_parse_submods(claims.get("submods")),
        issued_at=issued_at,
        expires_at=expires_at,
        verifier_build=vid["build"],
        verifier_developer=vid["developer"],
        profile=profile,
        nonce=nonce,
        enclave_key=enclave_key,
        policy_digest=policy_digest if isinstance(policy_digest, str) else None,
        result_id=result_id if isinstance(result_id, str) else None,
        extra={k: v for k, v in claims.items() if k not in _KNOWN_CLAIMS},
    )


#: RFC 7518 section 6.2.1.2 (EC ``x``/``y``) and RFC 8037 section 2 (OKP ``x``): the full
#: field length, leading zero bytes kept. Both curves we accept have 32-byte coordinates/keys.
_JWK_MEMBER_BYTES = 32


def _jwk_member(jwk: Mapping[str, Any], name: str) -> bytes:
    """Member ``name`` of a JWK: a base64url string of exactly ``_JWK_MEMBER_BYTES`` bytes.

    Exact length because the RFCs require it and because ``int.from_bytes`` would otherwise
    accept a second spelling of the same point (an extra leading zero byte), and a short OKP
    ``x`` surfaces as a bare ``ValueError`` from ``cryptography``."""
    value = jwk.get(name)
    if not isinstance(value, str):
        raise InputError(f"JWK member {name!r} is missing or not a string")
    raw = _unb64u(value, name)
    if len(raw) != _JWK_MEMBER_BYTES:
        raise InputError(
            f"JWK member {name!r} decodes to {len(raw)} bytes; need exactly {_JWK_MEMBER_BYTES}"
        )
    return raw


def public_key_from_jwk(jwk: Mapping[str, Any]) -> VerifyingKey:
    """Load a pinned verifier key given as a JWK (EC P-256 or OKP Ed25519).

    Raises ``InputError`` (``ParseError`` for bad base64url) for anything else; the key is read
    from an operator's file or flag, and a typed error lets the CLI report it as such."""
    kty = jwk.get("kty")
    if kty == "EC" and jwk.get("crv") == "P-256":
        x = int.from_bytes(_jwk_member(jwk, "x"), "big")
        y = int.from_bytes(_jwk_member(jwk, "y"), "big")
        try:
            return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        except ValueError as exc:
            raise InputError("JWK point is not on P-256") from exc
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        try:
            return ed25519.Ed25519PublicKey.from_public_bytes(_jwk_member(jwk, "x"))
        except ValueError as exc:  # length is checked above; kept for any other refusal
            raise InputError(f"JWK is not an Ed25519 public key: {exc}") from exc
    raise InputError("unsupported JWK: need EC P-256 or OKP Ed25519")
