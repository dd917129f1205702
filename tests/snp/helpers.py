"""Shared paths and small byte-editing helpers for the SNP tests (real vectors only)."""

from __future__ import annotations

import struct
from functools import cache

from cryptography import x509

from attest.snp.verify import load_amd_certificates
from tests.conftest import CPU

SNP = CPU / "snp"
GSG = SNP / "go-sev-guest"
VIRTEE = SNP / "virtee-sev"


@cache
def gsg_report() -> bytes:
    """go-sev-guest attestation.bin: Milan, v2, DEBUG set."""
    return (GSG / "attestation.bin").read_bytes()


@cache
def virtee_report() -> bytes:
    """virtee/sev report_milan.hex: Milan, v2, DEBUG clear."""
    return bytes.fromhex((VIRTEE / "report_milan.hex").read_text().strip())


def certs(*names: str) -> tuple[x509.Certificate, ...]:
    out: list[x509.Certificate] = []
    for name in names:
        out.extend(load_amd_certificates((SNP / name).read_bytes()))
    return tuple(out)


def gsg_certs() -> tuple[x509.Certificate, ...]:
    return certs("go-sev-guest/vcek.testcer", "go-sev-guest/ask_ark_milan.pem")


def virtee_certs() -> tuple[x509.Certificate, ...]:
    return certs("virtee-sev/vcek_milan.der", "virtee-sev/cert_chain_milan")


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return patch(data, offset, bytes([data[offset] ^ mask]))


def set_u32(data: bytes, offset: int, value: int) -> bytes:
    return patch(data, offset, struct.pack("<I", value))


def set_u64(data: bytes, offset: int, value: int) -> bytes:
    return patch(data, offset, struct.pack("<Q", value))
