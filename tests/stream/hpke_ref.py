"""A from-the-RFC reference of HPKE base mode, for tests only.

Written from RFC 9180 §4-§5 and §7.1 (DHKEM(X25519, HKDF-SHA256)) and the X-Wing combiner
(draft-connolly-cfrg-xwing-kem, used by draft-ietf-hpke-pq as kem_id 0x647a), with stdlib HMAC
and cryptography's raw X25519 / ML-KEM primitives. It lets the tests (1) reproduce the RFC 9180
test vectors byte for byte, including a fixed ephemeral key, which cryptography's single-shot
API cannot take, and (2) check cryptography's HPKE against an independent implementation in
both directions, for both lessee suites. Never imported by ``sealing``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002
KEM_X25519 = 0x0020
KEM_XWING = 0x647A
NN, NH = 12, 32
#: AEAD key length by aead_id (RFC 9180 §7.3).
NK = {AEAD_AES_128_GCM: 16, AEAD_AES_256_GCM: 32}
XWING_LABEL = b"\\.//^\\"


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info, length)


def kem_suite_id(kem_id: int) -> bytes:
    return b"KEM" + kem_id.to_bytes(2, "big")


def hpke_suite_id(kem_id: int, aead_id: int = AEAD_AES_256_GCM) -> bytes:
    return (
        b"HPKE"
        + kem_id.to_bytes(2, "big")
        + KDF_HKDF_SHA256.to_bytes(2, "big")
        + aead_id.to_bytes(2, "big")
    )


def x25519_derive_key_pair(ikm: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 §7.1.3 DeriveKeyPair for X25519: (skX, pkX) raw bytes."""
    sid = kem_suite_id(KEM_X25519)
    prk = labeled_extract(sid, b"", b"dkp_prk", ikm)
    sk = labeled_expand(sid, prk, b"sk", b"", 32)
    pk = x25519.X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()
    return sk, pk


def _x25519_shared(dh: bytes, kem_context: bytes) -> bytes:
    sid = kem_suite_id(KEM_X25519)
    prk = labeled_extract(sid, b"", b"eae_prk", dh)
    return labeled_expand(sid, prk, b"shared_secret", kem_context, 32)


def x25519_encap(sk_e: bytes, pk_r: bytes) -> tuple[bytes, bytes]:
    """Encap with a fixed ephemeral key: (shared_secret, enc)."""
    e = x25519.X25519PrivateKey.from_private_bytes(sk_e)
    enc = e.public_key().public_bytes_raw()
    dh = e.exchange(x25519.X25519PublicKey.from_public_bytes(pk_r))
    return _x25519_shared(dh, enc + pk_r), enc


def x25519_decap(enc: bytes, sk_r: bytes) -> bytes:
    r = x25519.X25519PrivateKey.from_private_bytes(sk_r)
    dh = r.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    return _x25519_shared(dh, enc + r.public_key().public_bytes_raw())


def xwing_decap(enc: bytes, sk_m: mlkem.MLKEM768PrivateKey, sk_x: bytes) -> bytes:
    """X-Wing decapsulation: enc = ct_M (1088) || ct_X (32)."""
    ct_m, ct_x = enc[:1088], enc[1088:]
    ss_m = sk_m.decapsulate(ct_m)
    xk = x25519.X25519PrivateKey.from_private_bytes(sk_x)
    ss_x = xk.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    pk_x = xk.public_key().public_bytes_raw()
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


@dataclass(frozen=True)
class Context:
    key: bytes
    base_nonce: bytes
    exporter_secret: bytes
    key_schedule_context: bytes
    secret: bytes

    def nonce(self, seq: int) -> bytes:
        return (int.from_bytes(self.base_nonce, "big") ^ seq).to_bytes(NN, "big")

    def seal(self, seq: int, aad: bytes, pt: bytes) -> bytes:
        return AESGCM(self.key).encrypt(self.nonce(seq), pt, aad)

    def open(self, seq: int, aad: bytes, ct: bytes) -> bytes:
        return AESGCM(self.key).decrypt(self.nonce(seq), ct, aad)


def key_schedule_base(
    kem_id: int, shared_secret: bytes, info: bytes, aead_id: int = AEAD_AES_256_GCM
) -> Context:
    """RFC 9180 §5.1 KeySchedule for mode_base (psk and psk_id empty)."""
    sid = hpke_suite_id(kem_id, aead_id)
    psk_id_hash = labeled_extract(sid, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(sid, b"", b"info_hash", info)
    ctx = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(sid, shared_secret, b"secret", b"")
    return Context(
        key=labeled_expand(sid, secret, b"key", ctx, NK[aead_id]),
        base_nonce=labeled_expand(sid, secret, b"base_nonce", ctx, NN),
        exporter_secret=labeled_expand(sid, secret, b"exp", ctx, NH),
        key_schedule_context=ctx,
        secret=secret,
    )
