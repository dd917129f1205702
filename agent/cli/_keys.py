"""Reading key files for the CLI: PEM private/public keys and JWKs, with clear errors."""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.bounded_read import read_bounded
from attest.ear import SigningKey, VerifyingKey, public_key_from_jwk
from attest.errors import InputError
from attest.jsonutil import load_json

MAX_KEY_FILE_BYTES = 64 * 1024


def _read(path: str) -> bytes:
    # Bounded while reading, not by ``stat``: a FIFO or /dev/zero has no size to stat.
    return read_bounded(path, MAX_KEY_FILE_BYTES, "key file")


def load_signing_key(path: str) -> SigningKey:
    """A P-256 or Ed25519 private key in PEM (PKCS#8 or SEC1)."""
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # e.g. an unknown curve
        raise InputError(f"{path}: not an unencrypted PEM private key") from exc
    if isinstance(key, ed25519.Ed25519PrivateKey) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    raise InputError(f"{path}: the result signing key must be P-256 (ES256) or Ed25519 (EdDSA)")


def load_verifying_key(path: str) -> VerifyingKey:
    """A P-256 or Ed25519 public key: PEM (SubjectPublicKeyInfo) or a JWK JSON object."""
    data = _read(path)
    if data.lstrip().startswith(b"{"):
        # The strict reader: typed errors for bad UTF-8, deep nesting, huge numbers, duplicates.
        doc = load_json(data, what=f"{path}: JWK")
        if not isinstance(doc, dict):
            raise InputError(f"{path}: not a JWK (a JSON object)")
        try:
            return public_key_from_jwk(doc)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # e.g. an unknown curve
        raise InputError(f"{path}: not a PEM public key or JWK") from exc
    if isinstance(key, ed25519.Ed25519PublicKey) or (
        isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    raise InputError(f"{path}: the verifier key must be P-256 or Ed25519")
