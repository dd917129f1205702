"""An emulated AMD SEV-SNP guest on a Milan chip: reports and the certificates that sign them.

``report(report_data)`` returns a 1184-byte ``ATTESTATION_REPORT`` (SEV-SNP ABI spec, table 23;
version 3 by default, version 2 on request), every field at its ABI offset, little-endian, every
reserved byte zero:

* POLICY ``0x30000`` (SMT allowed, reserved bit 17 set) plus DEBUG (bit 19) when asked;
* VMPL, SIGNATURE_ALGO 1 (ECDSA P-384/SHA-384), KEY_INFO 0 (signed by the VCEK);
* CURRENT/REPORTED/COMMITTED_TCB equal to the VCEK's TCB (Milan layout), LAUNCH_TCB too unless
  ``launch_tcb`` names an older one (a guest carried through a live firmware update);
* PLATFORM_INFO SMT_EN, REPORT_ID random per emulated guest, REPORT_ID_MA all ``ff`` (no
  migration agent), as in the real Milan reports in tests/assets/cpu/snp;
* v3: CPUID family 19h, model 01h, stepping 0 (Milan B0, the product the VCEK names);
* CHIP_ID = the VCEK's hwID extension; firmware 1.55.21 as current and committed version;
* signature: ECDSA P-384 / SHA-384 over bytes [0, 0x2A0) by the VCEK, R and S little-endian in
  72-byte fields (the top 24 bytes of each zero).

``certificates()`` returns what a host's certificate table holds: the VCEK (DER) and the
ASK + ARK (PEM), all from ``EmulationPki``; ``crl(at)`` AMD's CRL for the product as the KDS
serves it (DER, signed by the ARK, current at ``at``, revoking nothing).
"""

from __future__ import annotations

import secrets
import struct
from datetime import datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from agent.emulation.pki import EmulationPki, SnpTcb
from attest.errors import InputError

__all__ = ["EmulatedSnp", "SnpTcb"]

#: The ABI fixes the report at 0x4A0 bytes, of which [0, 0x2A0) are signed.
REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
REPORT_DATA_BYTES = 64
MEASUREMENT_BYTES = 48
HOST_DATA_BYTES = 32
REPORT_ID_BYTES = 32
#: Versions whose layouts the emulation writes (v3 adds the CPUID bytes at 0x188).
SUPPORTED_VERSIONS = (2, 3)
#: POLICY: ABI 0.0, SMT allowed (bit 16), bit 17 reserved-must-be-one; DEBUG is bit 19.
POLICY_BASE = (1 << 16) | (1 << 17)
POLICY_DEBUG = 1 << 19
PLATFORM_INFO_SMT_EN = 1
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
#: KEY_INFO 0: SIGNING_KEY = VCEK, CHIP_ID not masked, no author key.
KEY_INFO_VCEK = 0
MAX_VMPL = 3
#: Milan B0: CPUID family 19h, model 01h, stepping 0.
CPUID_MILAN_B0 = (0x19, 0x01, 0x00)
#: Firmware the emulated AMD SP claims to run (major.minor.build); 1.55 writes v3 reports.
FIRMWARE_VERSION = (1, 55, 21)
ECDSA_COMPONENT_FIELD = 72
P384_SCALAR_BYTES = 48

# Offsets (ABI table 23).
OFF_VERSION = 0x00
OFF_GUEST_SVN = 0x04
OFF_POLICY = 0x08
OFF_VMPL = 0x30
OFF_SIGNATURE_ALGO = 0x34
OFF_CURRENT_TCB = 0x38
OFF_PLATFORM_INFO = 0x40
OFF_KEY_INFO = 0x48
OFF_REPORT_DATA = 0x50
OFF_MEASUREMENT = 0x90
OFF_HOST_DATA = 0xC0
OFF_REPORT_ID = 0x140
OFF_REPORT_ID_MA = 0x160
OFF_REPORTED_TCB = 0x180
OFF_CPUID = 0x188
OFF_CHIP_ID = 0x1A0
OFF_COMMITTED_TCB = 0x1E0
OFF_CURRENT_VERSION = 0x1E8
OFF_COMMITTED_VERSION = 0x1EC
OFF_LAUNCH_TCB = 0x1F0
OFF_SIGNATURE = SIGNED_SIZE


class EmulatedSnp:
    """One emulated SEV-SNP guest: fixed launch measurement, policy, VMPL and platform TCB."""

    def __init__(
        self,
        pki: EmulationPki,
        *,
        measurement: bytes,
        policy_debug: bool = False,
        vmpl: int = 0,
        tcb: SnpTcb | None = None,
        version: int = 3,
        host_data: bytes = bytes(HOST_DATA_BYTES),
        guest_svn: int = 0,
        launch_tcb: SnpTcb | None = None,
    ) -> None:
        if not isinstance(measurement, bytes) or len(measurement) != MEASUREMENT_BYTES:
            raise InputError(f"the launch measurement is {MEASUREMENT_BYTES} bytes (SHA-384)")
        if not isinstance(vmpl, int) or not 0 <= vmpl <= MAX_VMPL:
            raise InputError(f"VMPL must be 0..{MAX_VMPL}, got {vmpl!r}")
        if version not in SUPPORTED_VERSIONS:
            raise InputError(f"emulated report version must be one of {SUPPORTED_VERSIONS}")
        if not isinstance(host_data, bytes) or len(host_data) != HOST_DATA_BYTES:
            raise InputError(f"HOST_DATA is {HOST_DATA_BYTES} bytes")
        if not isinstance(guest_svn, int) or not 0 <= guest_svn <= 0xFFFF_FFFF:
            raise InputError("GUEST_SVN is a 32-bit unsigned value")
        self.pki = pki
        self.measurement = measurement
        self.policy_debug = policy_debug
        self.vmpl = vmpl
        self.tcb = tcb if tcb is not None else SnpTcb()
        #: LAUNCH_TCB: the platform TCB the guest was launched under; lower than ``tcb`` for a
        #: guest carried through a live firmware update (default: the same).
        self.launch_tcb = launch_tcb if launch_tcb is not None else self.tcb
        self.version = version
        self.host_data = host_data
        self.guest_svn = guest_svn
        #: REPORT_ID identifies the guest for its lifetime; a fresh one per emulated guest.
        self.report_id = secrets.token_bytes(REPORT_ID_BYTES)
        self._vcek = pki.vcek(self.tcb)

    @property
    def policy(self) -> int:
        return POLICY_BASE | (POLICY_DEBUG if self.policy_debug else 0)

    def report(self, report_data: bytes) -> bytes:
        """A signed report carrying the caller's 64-byte ``report_data`` (the session binding)."""
        if not isinstance(report_data, bytes) or len(report_data) != REPORT_DATA_BYTES:
            raise InputError(f"REPORT_DATA is {REPORT_DATA_BYTES} bytes")
        buf = bytearray(REPORT_SIZE)
        tcb = self.tcb.raw
        struct.pack_into("<I", buf, OFF_VERSION, self.version)
        struct.pack_into("<I", buf, OFF_GUEST_SVN, self.guest_svn)
        struct.pack_into("<Q", buf, OFF_POLICY, self.policy)
        struct.pack_into("<I", buf, OFF_VMPL, self.vmpl)
        struct.pack_into("<I", buf, OFF_SIGNATURE_ALGO, SIGNATURE_ALGO_ECDSA_P384_SHA384)
        buf[OFF_CURRENT_TCB : OFF_CURRENT_TCB + 8] = tcb
        struct.pack_into("<Q", buf, OFF_PLATFORM_INFO, PLATFORM_INFO_SMT_EN)
        struct.pack_into("<I", buf, OFF_KEY_INFO, KEY_INFO_VCEK)
        buf[OFF_REPORT_DATA : OFF_REPORT_DATA + REPORT_DATA_BYTES] = report_data
        buf[OFF_MEASUREMENT : OFF_MEASUREMENT + MEASUREMENT_BYTES] = self.measurement
        buf[OFF_HOST_DATA : OFF_HOST_DATA + HOST_DATA_BYTES] = self.host_data
        buf[OFF_REPORT_ID : OFF_REPORT_ID + REPORT_ID_BYTES] = self.report_id
        buf[OFF_REPORT_ID_MA : OFF_REPORT_ID_MA + REPORT_ID_BYTES] = b"\xff" * REPORT_ID_BYTES
        buf[OFF_REPORTED_TCB : OFF_REPORTED_TCB + 8] = tcb
        if self.version >= 3:
            buf[OFF_CPUID : OFF_CPUID + 3] = bytes(CPUID_MILAN_B0)
        chip_id = self.pki.chip_id
        buf[OFF_CHIP_ID : OFF_CHIP_ID + len(chip_id)] = chip_id
        buf[OFF_COMMITTED_TCB : OFF_COMMITTED_TCB + 8] = tcb
        major, minor, build = FIRMWARE_VERSION
        for off in (OFF_CURRENT_VERSION, OFF_COMMITTED_VERSION):
            buf[off : off + 3] = bytes([build, minor, major])
        buf[OFF_LAUNCH_TCB : OFF_LAUNCH_TCB + 8] = self.launch_tcb.raw
        der = self._vcek.key.sign(bytes(buf[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        buf[OFF_SIGNATURE : OFF_SIGNATURE + P384_SCALAR_BYTES] = r.to_bytes(
            P384_SCALAR_BYTES, "little"
        )
        s_off = OFF_SIGNATURE + ECDSA_COMPONENT_FIELD
        buf[s_off : s_off + P384_SCALAR_BYTES] = s.to_bytes(P384_SCALAR_BYTES, "little")
        return bytes(buf)

    def certificates(self) -> tuple[bytes, bytes]:
        """(VCEK as DER, ASK then ARK as PEM): the host's certificate table for this guest."""
        return self._vcek.der, self.pki.ask.pem + self.pki.ark.pem

    def crl(self, at: datetime) -> bytes:
        """AMD's CRL for this chip's product, current at ``at`` (``EmulationPki.amd_crl``)."""
        return self.pki.amd_crl(at=at)
