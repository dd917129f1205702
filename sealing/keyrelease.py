"""Key release: the broker seals a model's data key to the enclave key an affirming result attests.

HPKE base mode (RFC 9180) with the suites of ``sealing.hpke_suite`` (ML-KEM-768+X25519 by
default, so a recorded release stays confidential against a future quantum computer). The HPKE
``info`` names the protocol version and binds the model id, model version, key id and the id of
the attestation result that authorised the release, so a sealed key cannot be replayed as the
release for another model, version or result. Every failure to open is one opaque error.
"""

from __future__ import annotations

from attest.errors import InputError
from sealing.hpke_suite import (
    MAX_INFO_LEN,
    HpkeOpenError,
    HpkePrivateKey,
    HpkePublicKey,
    open,
    seal,
)
from sealing.weights._format import MAX_MODEL_VERSION

KEY_RELEASE_LABEL = b"lessee/v1/key-release"
DATA_KEY_BYTES = 32

__all__ = [
    "KEY_RELEASE_LABEL",
    "MAX_MODEL_VERSION",
    "HpkeOpenError",
    "open_data_key",
    "release_info",
    "seal_data_key",
]


# The version is bound as a u32 (the width the broker's protocol uses). The sealed-weights
# format caps versions at the same MAX_MODEL_VERSION (2^32 - 1), so one constant serves both
# and every version that can be sealed can also be released.
_MAX_FIELD_BYTES = 0xFFFF  # a 2-byte length prefix


def _lp(data: bytes, field: str) -> bytes:
    if len(data) > _MAX_FIELD_BYTES:
        raise InputError(f"{field} is {len(data)} bytes, the bound is {_MAX_FIELD_BYTES}")
    return len(data).to_bytes(2, "big") + data


def _text(value: str, field: str) -> bytes:
    """``value`` as strict UTF-8, length-prefixed. A lone surrogate (what Python makes of
    undecodable bytes in argv or a file name) cannot be encoded: an ``InputError`` naming the
    field, not a ``UnicodeEncodeError``."""
    if not isinstance(value, str):
        raise InputError(f"{field} must be text")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{field} is not valid text (it holds a lone surrogate)") from None
    return _lp(data, field)


def release_info(*, model_id: str, model_version: int, key_id: str, result_id: str) -> bytes:
    """The HPKE info string: label and the release's identity, length-prefixed (injective).

    Layout: ``u16be(len(label)) || label || u16be(len(model_id)) || model_id ||
    u32be(model_version) || u16be(len(key_id)) || key_id || u16be(len(result_id)) ||
    result_id`` (texts UTF-8). A version outside ``0..2^32-1``, a text that is not valid
    UTF-8 or over 65535 bytes, or a whole info over ``hpke_suite.MAX_INFO_LEN`` (4096 bytes, the
    bound :func:`seal_data_key` would otherwise hit as a bare ``ValueError``) is an
    ``InputError``, never a silent truncation or a bare ``OverflowError``/``UnicodeEncodeError``.
    """
    if (
        isinstance(model_version, bool)
        or not isinstance(model_version, int)
        or not 0 <= model_version <= MAX_MODEL_VERSION
    ):
        raise InputError(f"model version must be an integer in 0..{MAX_MODEL_VERSION}")
    info = (
        _lp(KEY_RELEASE_LABEL, "label")
        + _text(model_id, "model id")
        + model_version.to_bytes(4, "big")
        + _text(key_id, "key id")
        + _text(result_id, "result id")
    )
    if len(info) > MAX_INFO_LEN:
        raise InputError(
            f"release info is {len(info)} bytes, the bound is {MAX_INFO_LEN} "
            "(model id, key id and result id together)"
        )
    return info


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
