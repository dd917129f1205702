"""Key release: the broker seals a model's data key to the enclave key an affirming result attests.

HPKE base mode (RFC 9180) with the suites of ``sealing.hpke_suite`` (ML-KEM-768+X25519 by
default, so a recorded release stays confidential against a future quantum computer). The HPKE
``info`` names the protocol version and binds the model id, model version, key id and the id of
the attestation result that authorised the release, so a sealed key cannot be replayed as the
release for another model, version or result. Every failure to open is one opaque error.
"""

from __future__ import annotations

from sealing.hpke_suite import HpkeOpenError, HpkePrivateKey, HpkePublicKey, open, seal

KEY_RELEASE_LABEL = b"lessee/v1/key-release"
DATA_KEY_BYTES = 32

__all__ = ["KEY_RELEASE_LABEL", "HpkeOpenError", "open_data_key", "release_info", "seal_data_key"]


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def release_info(*, model_id: str, model_version: int, key_id: str, result_id: str) -> bytes:
    """The HPKE info string: label and the release's identity, length-prefixed (injective)."""
    return (
        _lp(KEY_RELEASE_LABEL)
        + _lp(model_id.encode())
        + model_version.to_bytes(4, "big")
        + _lp(key_id.encode())
        + _lp(result_id.encode())
    )


def seal_data_key(
    enclave_key: HpkePublicKey,
    data_key: bytes,
    *,
    model_id: str,
    model_version: int,
    key_id: str,
    result_id: str,
) -> bytes:
    """Seal ``data_key`` to ``enclave_key``; returns HPKE ``enc || ct``."""
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"data key must be {DATA_KEY_BYTES} bytes")
    info = release_info(
        model_id=model_id, model_version=model_version, key_id=key_id, result_id=result_id
    )
    return seal(enclave_key, info, b"", data_key)


def open_data_key(
    enclave_key: HpkePrivateKey,
    sealed: bytes,
    *,
    model_id: str,
    model_version: int,
    key_id: str,
    result_id: str,
) -> bytes:
    """Open a released data key inside the enclave; ``HpkeOpenError`` on any mismatch."""
    info = release_info(
        model_id=model_id, model_version=model_version, key_id=key_id, result_id=result_id
    )
    key = open(enclave_key, info, b"", sealed)
    if len(key) != DATA_KEY_BYTES:
        raise HpkeOpenError()
    return key
