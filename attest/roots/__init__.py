"""Pinned vendor roots shipped with lessee (package data, byte-identical to the vendors' files).

Provenance: ``nvidia_device_root.pem`` and ``nvidia_rim_root.pem`` are NVIDIA/nvtrust
``certs/verifier_device_root.pem`` and ``certs/verifier_RIM_root.pem`` (see
tests/assets/nvidia/PROVENANCE.md). A test checks their SHA-256 fingerprints.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from cryptography import x509


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


@cache
def nvidia_device_root() -> x509.Certificate:
    """'NVIDIA Device Identity CA': root of GPU and NVSwitch device chains."""
    return x509.load_pem_x509_certificate(_read("nvidia_device_root.pem"))


@cache
def nvidia_rim_root() -> x509.Certificate:
    """'NVIDIA CoRIM signing Root CA': root of RIM signer chains."""
    return x509.load_pem_x509_certificate(_read("nvidia_rim_root.pem"))
