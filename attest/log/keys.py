"""Verifier keys (vkeys) of every supported signature type, from their one-line text form.

Kept apart from ``note`` because the cosignature and RFC 6962 modules build on ``note``; this is
the one place that knows all of them.
"""

from __future__ import annotations

from attest.log.cosignature import SIG_TYPE_COSIGNATURE_V1, CosignatureVerifier
from attest.log.note import (
    SIG_TYPE_ED25519,
    Ed25519Verifier,
    NoteError,
    NoteVerifier,
    parse_vkey,
)
from attest.log.sth import SIG_TYPE_RFC6962_STH, RFC6962Verifier

#: Largest vkey file read by the CLI (one line; an ML-DSA-44 key would be ~1.8 kB).
MAX_VKEY_FILE_BYTES = 8192


def load_verifier(vkey: str) -> NoteVerifier:
    """A verifier for a vkey of type 0x01 (Ed25519), 0x04 (cosignature/v1) or 0x05 (RFC 6962).

    The key ID in the vkey must equal the one computed from its name and key, so a vkey cannot
    claim another key's identity.
    """
    vk = parse_vkey(vkey)
    if vk.sig_type == SIG_TYPE_ED25519:
        return Ed25519Verifier.from_vkey(vk)
    if vk.sig_type == SIG_TYPE_COSIGNATURE_V1:
        return CosignatureVerifier.from_vkey(vk)
    if vk.sig_type == SIG_TYPE_RFC6962_STH:
        return RFC6962Verifier.from_vkey(vk)
    raise NoteError(f"unsupported verifier key type {vk.sig_type:#04x}")
