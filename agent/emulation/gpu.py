"""An emulated NVIDIA Hopper GPU in confidential-computing mode.

It answers the way NVML does inside a CC VM, byte for byte in NVIDIA's formats
(NVIDIA-EVIDENCE.md §2-4, checked against the real Hopper sample in tests/assets/nvidia/hopper):

* ``report(nonce)``: the 37-byte SPDM 1.1 GET_MEASUREMENTS request (``11 e0 01 ff``, nonce,
  slot 0) followed by the MEASUREMENTS response: ``11 60 00 00``, 64 DMTF blocks (index 1..64,
  type 1, 48-byte SHA-384 values), a fresh 32-byte responder nonce, the opaque data with the
  same TLV types, order and lengths as the real sample (VBIOS, board id, chip SKU, chip SKU mod,
  project, project SKU, project SKU mod, driver version, GPU info, MSRSCNT, CPRINFO,
  NVDEC0 status, FWID, protected-PCIe status), and a raw r||s ECDSA P-384 / SHA-384 signature by
  the GPU's leaf key over request || response-minus-signature. With the default versions the
  report is 4117 bytes, like the sample;
* ``certificate_chain_pem()``: the 5-certificate device chain from ``EmulationPki``;
* ``driver_rim()`` / ``vbios_rim()``: signed SWID RIMs in the shape of NVIDIA's
  (tests/assets/nvidia/rims/test_no_gpu/): same namespaces and prefixes, elements, attribute
  order, 64 Resources with NVIDIA's active index split (driver 7 and 21..40, VBIOS 0..6 and
  8..12) and names, golden values = this GPU's measurements; enveloped XML-DSig (ECDSA-SHA384,
  SHA-384 digest, C14N 1.1, ``Reference URI=""``, X509Data signer + L3 + CA + root, as in
  NVIDIA's RIMs) made with signxml by the emulation's leaf signer for that RIM kind (the driver
  and VBIOS RIMs have different signers under one L3, as NVIDIA's do);
* ``ocsp_responses(at)``: issuer-signed OCSP answers for every certificate the verifier checks
  (device chain links 1..3; both RIM signers, the RIM L3 and the RIM CA).

CC mode and DevTools mode are not part of the report (NVML reports them apart); they are kept
here for ``EmulatedGpuSource.cc_state``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from agent.emulation.pki import FWID_BYTES, EmulationPki, GpuIdentity
from attest.errors import InputError
from attest.nvidia.rim_select import driver_rim_id, vbios_rim_id

# --- SPDM framing (SPDM 1.1; values as in every real NVIDIA report) ---------------------------

SPDM_VERSION_11 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
#: Param1 bit 0: signature requested. Param2 0xFF: all blocks. NVIDIA's driver sends exactly these.
REQUEST_PARAM1 = 0x01
REQUEST_PARAM2 = 0xFF
SLOT_ID = 0
NONCE_BYTES = 32
#: Hopper GPUs report 64 measurement blocks, each a 48-byte SHA-384 digest.
MEASUREMENT_COUNT = 64
MEASUREMENT_BYTES = 48
MEASUREMENT_SPEC_DMTF = 0x01
#: DMTF value type of every block in the real Hopper sample (1: mutable firmware).
MEASUREMENT_VALUE_TYPE = 0x01
P384_COORD_BYTES = 48

# --- opaque data (NVIDIA-EVIDENCE.md §2) -----------------------------------------------------

OPAQUE_DRIVER_VERSION = 3
OPAQUE_GPU_INFO = 4
OPAQUE_VBIOS_VERSION = 6
OPAQUE_NVDEC0_STATUS = 11
OPAQUE_MSRSCNT = 12
OPAQUE_CPRINFO = 13
OPAQUE_BOARD_ID = 14
OPAQUE_CHIP_SKU = 15
OPAQUE_CHIP_SKU_MOD = 16
OPAQUE_PROJECT = 17
OPAQUE_PROJECT_SKU = 18
OPAQUE_PROJECT_SKU_MOD = 19
OPAQUE_FWID = 20
OPAQUE_PROTECTED_PCIE_STATUS = 21
#: NVIDIA's status bytes (0x55 = disabled), as in the real sample for NVDEC0 and protected PCIe.
STATUS_DISABLED = 0x55
#: Fixed-width, NUL-padded string fields of the real sample: name -> width.
CHIP_SKU_WIDTH = 9
CHIP_SKU_MOD_WIDTH = 5
PROJECT_WIDTH = 5
PROJECT_SKU_WIDTH = 5
PROJECT_SKU_MOD_WIDTH = 2
#: Board-specific raw fields of the emulated board (same widths as the real sample's).
EMULATED_BOARD_ID = bytes.fromhex("b1030000")
EMULATED_GPU_INFO = bytes.fromhex("8001000000000000")
EMULATED_CPRINFO = bytes.fromhex("00c00100")

# --- RIMs ------------------------------------------------------------------------------------

#: RIM indexes (block index - 1) with golden values in NVIDIA's Hopper driver and VBIOS RIMs.
DRIVER_RIM_ACTIVE = frozenset({7, *range(21, 41)})
VBIOS_RIM_ACTIVE = frozenset({*range(7), *range(8, 13)})
#: Indexes that carry several alternatives in NVIDIA's RIMs (index -> count); the emulated RIM
#: lists extra, never-matching alternatives before the real value, so "any alternative" matching
#: is exercised exactly as with NVIDIA's files.
RIM_ALTERNATIVES = {12: 4, 23: 2, 24: 2, 35: 2}
#: Signed RIMs remembered per process (a fleet emulates a handful of driver/VBIOS pairs).
RIM_CACHE_ENTRIES = 64
SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
TCG_RIM_NS = "https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-information-model/"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
#: The tag creator and manufacturer the emulated RIMs name (IANA PEN 0: reserved, nobody's).
RIM_ENTITY = "LESSEE EMULATION"
RIM_MANUFACTURER_ID = "0"
#: NVIDIA names Hopper RIMs for the GH100 chip.
HOPPER_PRODUCT = "GH100"

SUPPORTED_ARCHS = ("HOPPER",)
_DRIVER_VERSION = re.compile(r"[0-9]{1,5}(\.[0-9]{1,5}){1,3}")
_VBIOS_VERSION = re.compile(r"[0-9a-fA-F]{2}(\.[0-9a-fA-F]{2}){4}")
_ASCII_FIELD = re.compile(r"[0-9A-Za-z]{1,16}")


def default_measurements(seed: bytes = b"lessee-emulation") -> tuple[bytes, ...]:
    """64 deterministic SHA-384 values: ``SHA-384(seed || index)`` for blocks 1..64."""
    return tuple(
        hashlib.sha384(seed + i.to_bytes(1, "big")).digest()
        for i in range(1, MEASUREMENT_COUNT + 1)
    )


def _padded(text: str, width: int, what: str) -> bytes:
    raw = text.encode("ascii")
    if len(raw) > width:
        raise InputError(f"{what} {text!r} is longer than its {width}-byte field")
    return raw + b"\x00" * (width - len(raw))


def _tlv(ftype: int, value: bytes) -> bytes:
    return ftype.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


def vbios_bytes(version: str) -> bytes:
    """NVIDIA's 8-byte VBIOS field for text ``b3.b2.b1.b0.b4`` (e.g. ``96.00.9f.00.01``)."""
    if _VBIOS_VERSION.fullmatch(version) is None:
        raise InputError(f"VBIOS version {version!r} is not like 96.00.9f.00.01")
    b3, b2, b1, b0, b4 = (int(p, 16) for p in version.split("."))
    return bytes([b0, b1, b2, b3, b4, 0, 0, 0])


class EmulatedGpu:
    """One emulated Hopper GPU bound to GPU identity ``index`` of an ``EmulationPki``."""

    def __init__(
        self,
        pki: EmulationPki,
        *,
        arch: str = "HOPPER",
        driver_version: str = "550.90.07",
        vbios_version: str = "96.00.9f.00.01",
        measurements: Sequence[bytes] | None = None,
        seed: bytes = b"lessee-emulation",
        cc_mode_on: bool = True,
        devtools_on: bool = False,
        index: int = 0,
        project: str = "1010",
        project_sku: str = "0200",
        chip_sku: str = "882",
    ) -> None:
        if arch not in SUPPORTED_ARCHS:
            raise InputError(f"emulated GPUs are Hopper only; {arch!r} is not supported")
        if _DRIVER_VERSION.fullmatch(driver_version) is None:
            raise InputError(f"driver version {driver_version!r} is not like 550.90.07")
        for what, value in (
            ("project", project),
            ("project SKU", project_sku),
            ("chip SKU", chip_sku),
        ):
            if _ASCII_FIELD.fullmatch(value) is None:
                raise InputError(f"{what} {value!r} must be 1-16 letters and digits")
        values = tuple(measurements) if measurements is not None else default_measurements(seed)
        if len(values) != MEASUREMENT_COUNT or any(
            not isinstance(v, bytes) or len(v) != MEASUREMENT_BYTES for v in values
        ):
            raise InputError(
                f"an emulated Hopper GPU has {MEASUREMENT_COUNT} measurements of"
                f" {MEASUREMENT_BYTES} bytes"
            )
        self.pki = pki
        self.identity: GpuIdentity = pki.gpu(index)
        self.arch = arch
        self.index = index
        self.driver_version = driver_version
        self.vbios_version = vbios_version.lower()
        self._vbios = vbios_bytes(vbios_version)
        self.measurements = values
        self.cc_mode_on = cc_mode_on
        self.devtools_on = devtools_on
        self.project = project
        self.project_sku = project_sku
        self.chip_sku = chip_sku
        self._opaque = self._build_opaque()

    # --- the report -----------------------------------------------------------------------

    @property
    def fwid(self) -> bytes:
        """The FWID the leaf certificate carries (its last 48 bytes), echoed in opaque type 20."""
        ext = self.identity.leaf.cert.extensions.get_extension_for_oid(
            x509.ObjectIdentifier("2.23.133.5.4.1")
        ).value
        assert isinstance(ext, x509.UnrecognizedExtension)
        return ext.value[-FWID_BYTES:]

    def _build_opaque(self) -> bytes:
        """Opaque TLVs in the real Hopper sample's order, with its field widths."""
        driver = self.driver_version.encode("ascii") + b"\x00"
        counts = b"".join((1).to_bytes(4, "little") for _ in range(MEASUREMENT_COUNT))
        return b"".join(
            (
                _tlv(OPAQUE_VBIOS_VERSION, self._vbios),
                _tlv(OPAQUE_BOARD_ID, EMULATED_BOARD_ID),
                _tlv(OPAQUE_CHIP_SKU, _padded(self.chip_sku, CHIP_SKU_WIDTH, "chip SKU")),
                _tlv(OPAQUE_CHIP_SKU_MOD, _padded("0", CHIP_SKU_MOD_WIDTH, "chip SKU mod")),
                _tlv(OPAQUE_PROJECT, _padded(self.project, PROJECT_WIDTH, "project")),
                _tlv(
                    OPAQUE_PROJECT_SKU, _padded(self.project_sku, PROJECT_SKU_WIDTH, "project SKU")
                ),
                _tlv(OPAQUE_PROJECT_SKU_MOD, b"\x00" * PROJECT_SKU_MOD_WIDTH),
                _tlv(OPAQUE_DRIVER_VERSION, driver),
                _tlv(OPAQUE_GPU_INFO, EMULATED_GPU_INFO),
                _tlv(OPAQUE_MSRSCNT, counts),
                _tlv(OPAQUE_CPRINFO, EMULATED_CPRINFO),
                _tlv(OPAQUE_NVDEC0_STATUS, bytes([STATUS_DISABLED])),
                _tlv(OPAQUE_FWID, self.fwid),
                _tlv(OPAQUE_PROTECTED_PCIE_STATUS, bytes([STATUS_DISABLED])),
            )
        )

    def report(self, nonce: bytes) -> bytes:
        """A signed SPDM 1.1 report over the caller's 32-byte ``nonce``."""
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise InputError(f"the SPDM nonce must be {NONCE_BYTES} bytes")
        request = bytes([SPDM_VERSION_11, GET_MEASUREMENTS, REQUEST_PARAM1, REQUEST_PARAM2])
        request += nonce + bytes([SLOT_ID])
        record = b"".join(
            bytes([index, MEASUREMENT_SPEC_DMTF])
            + (3 + MEASUREMENT_BYTES).to_bytes(2, "little")
            + bytes([MEASUREMENT_VALUE_TYPE])
            + MEASUREMENT_BYTES.to_bytes(2, "little")
            + value
            for index, value in enumerate(self.measurements, start=1)
        )
        response = bytes([SPDM_VERSION_11, MEASUREMENTS, 0, SLOT_ID, MEASUREMENT_COUNT])
        response += len(record).to_bytes(3, "little") + record
        response += secrets.token_bytes(NONCE_BYTES)  # responder nonce: fresh, as on hardware
        response += len(self._opaque).to_bytes(2, "little") + self._opaque
        signed = request + response
        der = self.identity.leaf.key.sign(signed, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        return signed + r.to_bytes(P384_COORD_BYTES, "big") + s.to_bytes(P384_COORD_BYTES, "big")

    def certificate_chain_pem(self) -> bytes:
        """The device chain as NVML returns it: PEM, leaf first, ending with the root copy."""
        return b"".join(c.public_bytes(Encoding.PEM) for c in self.pki.device_chain(self.index))

    # --- RIMs -----------------------------------------------------------------------------

    @property
    def driver_rim_id(self) -> str:
        return driver_rim_id(arch=self.arch, chip_info=None, driver_version=self.driver_version)

    @property
    def vbios_rim_id(self) -> str:
        return vbios_rim_id(
            project=self.project,
            project_sku=self.project_sku,
            chip_sku=self.chip_sku,
            vbios_version=self.vbios_version,
        )

    def driver_rim(self) -> bytes:
        """The signed driver RIM whose golden values are this GPU's driver measurements."""
        return signed_rim(self.pki, "driver", self.driver_version, self.measurements)

    def vbios_rim(self) -> bytes:
        """The signed VBIOS RIM whose golden values are this GPU's VBIOS measurements."""
        return signed_rim(self.pki, "vbios", self.vbios_version.upper(), self.measurements)

    # --- revocation -----------------------------------------------------------------------

    def ocsp_responses(self, at: datetime) -> tuple[bytes, ...]:
        """Stapled OCSP answers, current at ``at``, for every certificate the pipeline checks.

        Device chain links 1..3 (BROM, Provisioner ICA, Identity: NVIDIA's rule) and every RIM
        certificate but the root (driver signer, L3, CA, VBIOS signer; the two chains share L3
        and CA, answered once), each signed by its issuer: 7 responses.
        """
        chain = self.pki.device_chain(self.index)
        issuers = self.pki.device_issuers(self.index)
        device = tuple(self.pki.ocsp_response(chain[i], issuers[i], at=at) for i in (1, 2, 3))
        rim = tuple(
            self.pki.ocsp_response(cert, issuer, at=at)
            for cert, issuer in self.pki.rim_ocsp_subjects()
        )
        return device + rim


def _unsigned_rim(
    version: str,
    active: frozenset[int],
    name_of: Callable[[int, bool], str],
    measurements: tuple[bytes, ...],
) -> etree._Element:
    """The RIM body, line for line in the layout of NVIDIA's files (before signing)."""
    tag_id = hashlib.sha384(f"{HOPPER_PRODUCT}_{version}".encode("ascii")).hexdigest()
    lines = [
        f'<SoftwareIdentity xmlns="{SWID_NS}" xmlns:ns0="{SWID_NS}" xmlns:ns2="{SHA384_NS}"'
        f' corpus="false" name="{HOPPER_PRODUCT}" patch="false" supplemental="false"'
        f' tagId="{tag_id}" version="1.0" tagVersion="0">',
        f'    <ns0:Entity name="{RIM_ENTITY}" role="softwareCreator tagCreator"/>',
        f'    <ns0:Meta xmlns:ns1="{TCG_RIM_NS}" colloquialVersion="{version}" edition="GPU"'
        f' product="{HOPPER_PRODUCT}" revision="r1" PayloadType="direct"'
        f' ns1:BindingSpec="RIMIM" ns1:BindingSpecVersion="1.01"'
        f' ns1:PlatformManufacturerId="{RIM_MANUFACTURER_ID}"'
        f' ns1:PlatformManufacturerStr="{RIM_ENTITY}" ns1:PlatformModel="{HOPPER_PRODUCT}"'
        f' ns1:FirmwareManufacturer="{RIM_ENTITY}"'
        f' ns1:FirmwareManufacturerId="{RIM_MANUFACTURER_ID}"/>',
        f'    <ns0:Payload xmlns:SHA384="{SHA384_NS}">',
    ]
    for index in range(MEASUREMENT_COUNT):
        is_active = index in active
        if is_active:
            value = measurements[index]  # RIM index k describes block k + 1
            count = RIM_ALTERNATIVES.get(index, 1)
            others = [
                hashlib.sha384(b"superseded" + bytes([index, n]) + value).digest()
                for n in range(count - 1)
            ]
            alternatives = [*others, value]
        else:
            alternatives = [bytes(MEASUREMENT_BYTES)]
        hashes_attr = " ".join(f'ns2:Hash{n}="{v.hex()}"' for n, v in enumerate(alternatives))
        lines.append(
            f'        <ns0:Resource type="Measurement" index="{index}"'
            f' active="{is_active}" alternatives="{len(alternatives)}" {hashes_attr}'
            f' name="{name_of(index, is_active)}" size="{MEASUREMENT_BYTES}"/>'
        )
    lines += ["    </ns0:Payload>", "</SoftwareIdentity>"]
    return etree.fromstring(
        "\n".join(lines).encode("ascii"),
        parser=etree.XMLParser(resolve_entities=False, no_network=True),
    )


@lru_cache(maxsize=RIM_CACHE_ENTRIES)
def signed_rim(
    pki: EmulationPki, kind: str, version: str, measurements: tuple[bytes, ...]
) -> bytes:
    """A signed driver or VBIOS RIM for ``version`` with golden values from ``measurements``.

    Remembered per (PKI, kind, version, measurements): NVIDIA serves one RIM per id, and
    ECDSA signatures are randomised, so without this two identical GPUs would carry two
    different RIMs for the same id (which a verifier rightly refuses as ambiguous).
    """
    if kind == "driver":
        root = _unsigned_rim(version, DRIVER_RIM_ACTIVE, _driver_name, measurements)
    elif kind == "vbios":
        root = _unsigned_rim(version, VBIOS_RIM_ACTIVE, _vbios_name, measurements)
    else:
        raise InputError(f"RIM kind must be 'driver' or 'vbios', not {kind!r}")
    signer = XMLSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA384,
        digest_algorithm=DigestAlgorithm.SHA384,
        c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
    )
    certs = [c.public_bytes(Encoding.PEM).decode("ascii") for c in pki.rim_chain(kind)]
    signed = signer.sign(root, key=pki.rim_signer(kind).key, cert=certs)
    # NVIDIA's files end with a newline after </SoftwareIdentity>.
    return bytes(etree.tostring(signed)) + b"\n"


def _driver_name(index: int, active: bool) -> str:
    """NVIDIA's Resource names in the Hopper driver RIM."""
    if not active or index in (7, 28):
        return f"Measurement_{index}"
    if 32 <= index <= 38:
        return f"HashedMeasurement_{index}_GSP"
    return f"MixedMeasurement_{index}"


def _vbios_name(index: int, active: bool) -> str:
    """NVIDIA's Resource names in the Hopper VBIOS RIM."""
    if active and 1 <= index <= 6:
        return f"HashedMeasurement_{index}_FSP"
    return f"Measurement_{index}"
