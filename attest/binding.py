"""The composite session binding: one value ties every device's evidence to one session.

An enclave is a confidential VM plus the GPUs it drives. Each produces its own report, so an
attacker who controls the host could pair a genuine CPU report from one session with GPU
reports from another (or from a different machine). To prevent that, every report of a session
carries a value derived from the same three inputs:

* the broker's single-use **nonce** (freshness: the evidence was made after the broker asked),
* the enclave's ephemeral **public key** (the key the result will attest and keys go to),
* a **protocol label** (domain separation between lessee protocols and versions).

The CPU report's 64-byte ``report_data`` is SHA-512 over a length-prefixed encoding of the three
inputs under a fixed context string; each GPU's 32-byte SPDM requester nonce is SHA-256 over a
second context string and that ``report_data``. Length prefixes make the encoding injective
(no two input triples collide by shifting bytes between fields). See docs/binding.md.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from attest.errors import InputError

#: Context strings; changing either is a protocol version change.
REPORT_DATA_CONTEXT = b"lessee/v1/binding/report-data"
GPU_NONCE_CONTEXT = b"lessee/v1/binding/gpu-nonce"
#: The label the key-release protocol uses (the only one today).
DEFAULT_PROTOCOL_LABEL = "lessee/v1/key-release"

#: The broker's nonces are 32 random bytes; shorter ones would weaken freshness.
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
#: Long enough for an ML-KEM-768+X25519 public key (1216 bytes) with its suite tag.
MAX_PUBLIC_KEY_BYTES = 4096
MAX_LABEL_BYTES = 128

REPORT_DATA_BYTES = 64
GPU_NONCE_BYTES = 32


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


@dataclass(frozen=True)
class SessionBinding:
    """The values one session's reports must carry."""

    report_data: bytes
    gpu_nonce: bytes

    def matches_report_data(self, value: bytes) -> bool:
        return len(value) == REPORT_DATA_BYTES and hmac.compare_digest(value, self.report_data)

    def matches_gpu_nonce(self, value: bytes) -> bool:
        return len(value) == GPU_NONCE_BYTES and hmac.compare_digest(value, self.gpu_nonce)


def derive_binding(
    nonce: bytes, enclave_public_key: bytes, protocol_label: str = DEFAULT_PROTOCOL_LABEL
) -> SessionBinding:
    """Derive the CPU report_data and the GPU SPDM nonce for one session."""
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise InputError(
            f"nonce must be {MIN_NONCE_BYTES}..{MAX_NONCE_BYTES} bytes, got {len(nonce)}"
        )
    if not 0 < len(enclave_public_key) <= MAX_PUBLIC_KEY_BYTES:
        raise InputError(f"enclave public key must be 1..{MAX_PUBLIC_KEY_BYTES} bytes")
    label = protocol_label.encode("utf-8")
    if not 0 < len(label) <= MAX_LABEL_BYTES:
        raise InputError(f"protocol label must be 1..{MAX_LABEL_BYTES} bytes")
    report_data = hashlib.sha512(
        _lp(REPORT_DATA_CONTEXT) + _lp(label) + _lp(nonce) + _lp(enclave_public_key)
    ).digest()
    gpu_nonce = hashlib.sha256(_lp(GPU_NONCE_CONTEXT) + report_data).digest()
    return SessionBinding(report_data=report_data, gpu_nonce=gpu_nonce)
