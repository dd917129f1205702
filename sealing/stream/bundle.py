"""The attested key bundle: what a client must verify before it seals a prompt to an enclave.

The enclave publishes its HPKE public key together with the broker's attestation result (an EAR
JWT naming that key) and the log proof of the appraisal. The client decodes the bundle strictly
here, then :func:`verify_bundle` runs a caller-supplied check that the result attests *this exact
key* (the EAR verifier and the log verifier belong to ``attest``; this module stays pure and
knows neither). Only a :class:`VerifiedKeyBundle` can start a stream, so an unverified key cannot
be used by accident.

A bundle may also carry the enclave's own evidence (the ``attest`` evidence bundle it attested
with) and the broker's nonce for that session: with them a client that does not trust the broker
appraises the evidence itself, and the binding (nonce, this key) in the reports is what ties the
evidence to this key. Such a bundle is version 2; one without evidence stays version 1, byte for
byte what it was.

Wire format (all integers big-endian; see ``docs/formats/token-stream.md``)::

    magic "LSKB" | version u8 (1 or 2) | suite u8 | key_id [32] | pk_len u16 | pk [pk_len]
    | result_len u32 | attestation_result [result_len] | proof_len u32 | log_proof [proof_len]
    version 2 only: | nonce_len u8 | nonce [nonce_len] | evidence_len u32 | evidence [evidence_len]
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from attest.errors import ParseError, VerificationError
from attest.timeutil import require_aware
from sealing.hpke_suite import SUITE_PARAMS, HpkePublicKey, SuiteId, parse_suite_id

MAGIC = b"LSKB"
VERSION = 1
#: The version that also carries the enclave's evidence and the session nonce.
VERSION_WITH_EVIDENCE = 2
KEY_ID_LEN = 32
#: An EAR JWT with one submodule per device (8 GPUs, 4 NVSwitches, the CPU) and NVIDIA's claims
#: is a few KiB; 64 KiB leaves an order of magnitude of room and refuses anything absurd.
MAX_ATTESTATION_RESULT_LEN = 64 * 1024
#: The log proof (``attest.log.entryproof``) carries the attest log entry itself, which holds the
#: EAR (bounded above at 64 KiB) and its blob references, with an RFC 9162 inclusion proof of at
#: most 64 hashes (2 KiB) and a signed checkpoint: that format's bound is ~178 KiB (tested to fit).
MAX_LOG_PROOF_LEN = 192 * 1024
#: The session nonce's bounds (``attest.binding``'s: 16..64 bytes).
MIN_NONCE_LEN, MAX_NONCE_LEN = 16, 64
#: The evidence bundle JSON of an HGX enclave (8 GPU reports with chains, stapled OCSP answers
#: and RIMs, 4 NVSwitches, the CPU report and its chain) is a few hundred KiB; the broker takes
#: up to 8 MiB (``attest.bundle.MAX_BUNDLE_BYTES``), and so does a client.
MAX_EVIDENCE_LEN = 8 * 1024 * 1024
_FIXED_LEN = len(MAGIC) + 1 + 1 + KEY_ID_LEN + 2
#: The largest bundle any valid combination can produce.
MAX_BUNDLE_LEN = (
    _FIXED_LEN
    + max(p.public_key_len for p in SUITE_PARAMS.values())
    + 4
    + MAX_ATTESTATION_RESULT_LEN
    + 4
    + MAX_LOG_PROOF_LEN
    + 1
    + MAX_NONCE_LEN
    + 4
    + MAX_EVIDENCE_LEN
)


@dataclass(frozen=True)
class KeyBundle:
    """A decoded (not yet verified) key bundle. ``raw`` holds the exact bytes received.

    Construction checks the internal consistency that needs no trust: the key id is the hash of
    the encoded key, the suite byte matches the key's suite. ``evidence`` and ``nonce`` are
    empty in a version-1 bundle; in a version-2 bundle both are present, and nothing about them
    is trusted until a check appraises the evidence.
    """

    suite: SuiteId
    key_id: bytes
    public_key: HpkePublicKey
    attestation_result: bytes
    log_proof: bytes
    raw: bytes = field(repr=False)
    nonce: bytes = b""
    evidence: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.public_key.suite is not self.suite:
            raise ParseError("bundle suite differs from the key's suite", field="suite")
        if self.key_id != self.public_key.key_id:
            raise ParseError("key_id is not SHA-256 of the encoded public key", field="key_id")
        if not 0 < len(self.attestation_result) <= MAX_ATTESTATION_RESULT_LEN:
            raise ParseError(
                f"attestation result must be 1..{MAX_ATTESTATION_RESULT_LEN} bytes",
                field="attestation_result",
            )
        if len(self.log_proof) > MAX_LOG_PROOF_LEN:
            raise ParseError(f"log proof exceeds {MAX_LOG_PROOF_LEN} bytes", field="log_proof")
        if bool(self.evidence) != bool(self.nonce):
            raise ParseError("evidence and its session nonce come together", field="evidence")
        if self.nonce and not MIN_NONCE_LEN <= len(self.nonce) <= MAX_NONCE_LEN:
            raise ParseError(f"nonce must be {MIN_NONCE_LEN}..{MAX_NONCE_LEN} bytes", field="nonce")
        if len(self.evidence) > MAX_EVIDENCE_LEN:
            raise ParseError(f"evidence exceeds {MAX_EVIDENCE_LEN} bytes", field="evidence")

    @classmethod
    def build(
        cls,
        public_key: HpkePublicKey,
        attestation_result: bytes,
        log_proof: bytes,
        *,
        evidence: bytes = b"",
        nonce: bytes = b"",
    ) -> KeyBundle:
        """Assemble a bundle on the enclave side and encode it canonically: version 2 when the
        enclave's ``evidence`` (the evidence bundle JSON it attested with) and the session
        ``nonce`` are given, for clients that appraise the evidence themselves; else version 1."""
        result, proof = bytes(attestation_result), bytes(log_proof)
        evidence, nonce = bytes(evidence), bytes(nonce)
        parts = [
            MAGIC,
            bytes([VERSION_WITH_EVIDENCE if evidence else VERSION, public_key.suite]),
            public_key.key_id,
            struct.pack(">H", len(public_key.raw)),
            public_key.raw,
            struct.pack(">I", len(result)),
            result,
            struct.pack(">I", len(proof)),
            proof,
        ]
        if evidence:
            parts += [bytes([len(nonce) & 0xFF]), nonce, struct.pack(">I", len(evidence)), evidence]
        raw = b"".join(parts)
        return cls(
            public_key.suite, public_key.key_id, public_key, result, proof, raw, nonce, evidence
        )

    @classmethod
    def decode(cls, data: bytes) -> KeyBundle:
        """Decode strictly: magic, version, known suite, exact key length, bounded opaque fields,
        no trailing bytes. Every failure is a ``ParseError`` naming the field and offset."""
        data = bytes(data)
        if len(data) > MAX_BUNDLE_LEN:
            raise ParseError(f"bundle exceeds {MAX_BUNDLE_LEN} bytes", offset=0, field="bundle")
        if len(data) < _FIXED_LEN:
            raise ParseError("bundle truncated", offset=len(data), field="header")
        if data[:4] != MAGIC:
            raise ParseError("bad magic", offset=0, field="magic")
        version = data[4]
        if version not in (VERSION, VERSION_WITH_EVIDENCE):
            raise ParseError(f"unsupported bundle version {version}", offset=4, field="version")
        suite = parse_suite_id(data[5], offset=5)
        key_id = data[6 : 6 + KEY_ID_LEN]
        off = 6 + KEY_ID_LEN
        (pk_len,) = struct.unpack_from(">H", data, off)
        want = SUITE_PARAMS[suite].public_key_len
        if pk_len != want:
            raise ParseError(f"pk_len {pk_len}, suite needs {want}", offset=off, field="pk_len")
        off += 2
        pk_raw = _take(data, off, pk_len, "public_key")
        off += pk_len
        result_len = _u32(data, off, "result_len")
        off += 4
        if not 0 < result_len <= MAX_ATTESTATION_RESULT_LEN:
            raise ParseError(
                f"result_len {result_len} out of bounds", offset=off - 4, field="result_len"
            )
        result = _take(data, off, result_len, "attestation_result")
        off += result_len
        proof_len = _u32(data, off, "proof_len")
        off += 4
        if proof_len > MAX_LOG_PROOF_LEN:
            raise ParseError(
                f"proof_len {proof_len} out of bounds", offset=off - 4, field="proof_len"
            )
        proof = _take(data, off, proof_len, "log_proof")
        off += proof_len
        nonce = evidence = b""
        if version == VERSION_WITH_EVIDENCE:
            nonce_len = _take(data, off, 1, "nonce_len")[0]
            if not MIN_NONCE_LEN <= nonce_len <= MAX_NONCE_LEN:
                raise ParseError(
                    f"nonce_len {nonce_len} out of bounds", offset=off, field="nonce_len"
                )
            off += 1
            nonce = _take(data, off, nonce_len, "nonce")
            off += nonce_len
            evidence_len = _u32(data, off, "evidence_len")
            off += 4
            if not 0 < evidence_len <= MAX_EVIDENCE_LEN:
                raise ParseError(
                    f"evidence_len {evidence_len} out of bounds",
                    offset=off - 4,
                    field="evidence_len",
                )
            evidence = _take(data, off, evidence_len, "evidence")
            off += evidence_len
        if off != len(data):
            raise ParseError("trailing bytes after the bundle", offset=off, field="bundle")
        public_key = HpkePublicKey.from_raw(suite, pk_raw)
        return cls(suite, key_id, public_key, result, proof, data, nonce, evidence)


def _take(data: bytes, off: int, n: int, name: str) -> bytes:
    if off + n > len(data):
        raise ParseError(f"{name} truncated", offset=len(data), field=name)
    return data[off : off + n]


def _u32(data: bytes, off: int, name: str) -> int:
    value: int = struct.unpack(">I", _take(data, off, 4, name))[0]
    return value


#: The check that the bundle's attestation result attests exactly ``bundle.public_key`` as of
#: ``at`` (EAR signature by the pinned broker key, affirming status, the key claim equal to
#: ``bundle.public_key.encode()`` or its key id, and the log proof). It raises a
#: ``VerificationError`` to reject and returns ``None`` to accept: a rejected key must never be
#: one forgotten ``if`` away from use.
KeyAttestationCheck = Callable[[KeyBundle, datetime], None]

_VERIFIED = object()


@dataclass(frozen=True)
class VerifiedKeyBundle:
    """A bundle whose attestation check passed at ``verified_at``. Made only by :func:`verify_bundle`."""

    bundle: KeyBundle
    verified_at: datetime
    _token: object = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("VerifiedKeyBundle is made by verify_bundle() only")

    @property
    def public_key(self) -> HpkePublicKey:
        return self.bundle.public_key


def verify_bundle(
    bundle: KeyBundle, *, check: KeyAttestationCheck, at: datetime
) -> VerifiedKeyBundle:
    """Run ``check(bundle, at)`` and wrap the bundle as verified.

    The check must raise to reject. A check that *returns* something (say ``False``) is treated
    as a rejection too, so a predicate passed by mistake cannot silently accept every key; an
    exception that is not a lessee error (a bug in the check) propagates unchanged.
    """
    at = require_aware(at)
    outcome = check(bundle, at)  # type: ignore[func-returns-value]
    if outcome is not None:
        raise VerificationError(
            "key attestation check returned a value instead of raising or returning None",
            reason="key_not_attested",
        )
    return VerifiedKeyBundle(bundle, at, _VERIFIED)
