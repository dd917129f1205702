"""Evidence in every form NVIDIA users have, turned into one shape: ``DeviceEvidence``.

* NVIDIA SDK evidence JSON: a list of ``{"arch", "certificate": base64(PEM chain),
  "evidence": base64(report), "nonce": hex, ...}`` (C++ SDK, ``ppcie/gpu_evidence.json``), or one
  such object;
* a binary report, or the hex text NVIDIA's Python samples use, plus a PEM chain given apart.

This module only decodes containers (bounded, strict base64 and hex, known keys only); the report
itself is parsed by ``attest.nvidia.spdm`` / ``opaque`` and verified by ``attest.nvidia.device``.
Pure: the caller reads the files.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509

from attest.errors import InputError, ParseError
from attest.jsonutil import load_json
from attest.nvidia.opaque import DeviceKind
from attest.nvidia.spdm import MAX_REPORT_LENGTH, NONCE_LENGTH
from attest.x509chain import MAX_PEM_CHAIN_BYTES, describe, load_pem_chain

#: An evidence file above this is not evidence: 12 devices (8 GPUs + 4 NVSwitches, the largest
#: CC system NVIDIA ships) take about 110 KiB of JSON.
MAX_EVIDENCE_FILE_BYTES = 1 << 20
#: More devices than one confidential VM can hold (HGX: 8 GPUs + 4 NVSwitches) is refused.
MAX_DEVICES = 32
#: Keys NVIDIA's SDKs write in an evidence entry. Anything else is refused rather than ignored,
#: so a renamed or misspelt field cannot silently drop a check.
KNOWN_JSON_KEYS = frozenset(
    {"arch", "certificate", "evidence", "nonce", "version", "driver_version", "vbios_version"}
)
REQUIRED_JSON_KEYS = frozenset({"arch", "certificate", "evidence"})
#: A hex-text report is at most twice the binary limit plus whitespace (line breaks).
MAX_HEX_TEXT_BYTES = 2 * MAX_REPORT_LENGTH + 4096


class Arch(StrEnum):
    """Device architectures NVIDIA names in evidence (``arch``)."""

    HOPPER = "HOPPER"
    BLACKWELL = "BLACKWELL"
    LS10 = "LS10"  # the NVSwitch of HGX H100/H200

    @property
    def kind(self) -> DeviceKind:
        return DeviceKind.SWITCH if self is Arch.LS10 else DeviceKind.GPU


#: Leaf-certificate common-name prefixes that name the architecture (device chains, §3).
_LEAF_PREFIXES: tuple[tuple[str, Arch], ...] = (
    ("GH100 ", Arch.HOPPER),
    ("GB10", Arch.BLACKWELL),
    ("GB20", Arch.BLACKWELL),
    ("LS_10 ", Arch.LS10),
)


@dataclass(frozen=True)
class DeviceEvidence:
    """One device's evidence, undecoded: the report bytes and the chain exactly as given.

    ``arch`` is what the evidence container declared (None for a bare report), ``nonce_hint`` the
    nonce the container claims was used (never trusted: the verifier compares the nonce inside
    the signed report with the caller's). ``declared_*`` are the versions NVML reported next to
    the evidence, when the container carries them; they are checked against the signed report.
    """

    index: int
    arch: Arch | None
    report_bytes: bytes
    chain: tuple[x509.Certificate, ...]
    nonce_hint: bytes | None = None
    declared_driver_version: str | None = None
    declared_vbios_version: str | None = None


def chain_arch(chain: tuple[x509.Certificate, ...]) -> Arch | None:
    """The architecture the leaf certificate names, or None when it names none we know."""
    if not chain:
        return None
    name = describe(chain[0])
    for prefix, arch in _LEAF_PREFIXES:
        if name.startswith(prefix):
            return arch
    return None


def parse_arch(value: object, where: str) -> Arch:
    """A declared architecture name (any case) -> ``Arch``; InputError for any other value."""
    if not isinstance(value, str):
        raise InputError(f"{where}: 'arch' must be a string")
    try:
        return Arch(value.upper())
    except ValueError:
        known = ", ".join(a.value for a in Arch)
        raise InputError(f"{where}: unknown arch {value!r} (known: {known})") from None


_NONCE_HEX = re.compile(f"[0-9a-fA-F]{{{2 * NONCE_LENGTH}}}")


def parse_nonce(text: str, *, where: str = "nonce") -> bytes:
    """A 32-byte nonce given as exactly 64 hex digits (an optional 0x prefix, and whitespace
    around the whole, are accepted).

    Checked with a full match, not by length and ``bytes.fromhex``: ``fromhex`` skips spaces
    between bytes, so a length check on the text let "ab ab ..." through as a shorter nonce.
    """
    t = text.strip()
    if t[:2].lower() == "0x":
        t = t[2:]
    if _NONCE_HEX.fullmatch(t) is None:
        raise ParseError(
            f"expected exactly {2 * NONCE_LENGTH} hex digits ({len(t)} characters given)",
            field=where,
        )
    return bytes.fromhex(t)


def _b64(value: object, where: str, limit: int) -> bytes:
    if not isinstance(value, str):
        raise InputError(f"{where}: must be a base64 string")
    if len(value) > limit * 4 // 3 + 4:
        raise InputError(f"{where}: larger than {limit} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: not valid base64") from None


def _opt_str(entry: dict[str, object], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}: {key!r} must be a string")
    return value


def _from_json_entry(index: int, entry: object) -> DeviceEvidence:
    where = f"evidence[{index}]"
    if not isinstance(entry, dict):
        raise InputError(f"{where}: must be an object")
    unknown = sorted(set(entry) - KNOWN_JSON_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    missing = sorted(REQUIRED_JSON_KEYS - set(entry))
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    arch = parse_arch(entry["arch"], where)
    chain = load_pem_chain(_b64(entry["certificate"], f"{where}.certificate", MAX_PEM_CHAIN_BYTES))
    report = _b64(entry["evidence"], f"{where}.evidence", MAX_REPORT_LENGTH)
    nonce_text = _opt_str(entry, "nonce", where)
    return DeviceEvidence(
        index=index,
        arch=arch,
        report_bytes=report,
        chain=chain,
        nonce_hint=parse_nonce(nonce_text, where=f"{where}.nonce") if nonce_text else None,
        declared_driver_version=_opt_str(entry, "driver_version", where),
        declared_vbios_version=_opt_str(entry, "vbios_version", where),
    )


def load_sdk_json(data: bytes) -> tuple[DeviceEvidence, ...]:
    """NVIDIA SDK evidence JSON: a list of entries (or one entry) -> evidence, in order."""
    if len(data) > MAX_EVIDENCE_FILE_BYTES:
        raise InputError(f"evidence is {len(data)} bytes; the limit is {MAX_EVIDENCE_FILE_BYTES}")
    doc = load_json(data, what="evidence JSON")
    entries = doc if isinstance(doc, list) else [doc]
    if not entries:
        raise InputError("evidence JSON holds no devices")
    if len(entries) > MAX_DEVICES:
        raise InputError(f"evidence JSON holds {len(entries)} devices; the limit is {MAX_DEVICES}")
    return tuple(_from_json_entry(i, e) for i, e in enumerate(entries))


def decode_report_bytes(data: bytes) -> bytes:
    """A report given as binary or as hex text (whitespace allowed): return the binary."""
    stripped = b"".join(data.split())
    if (
        stripped
        and len(stripped) % 2 == 0
        and all(c in b"0123456789abcdefABCDEF" for c in stripped)
    ):
        if len(data) > MAX_HEX_TEXT_BYTES:
            raise InputError(f"hex report is {len(data)} bytes; the limit is {MAX_HEX_TEXT_BYTES}")
        return bytes.fromhex(stripped.decode("ascii"))
    if len(data) > MAX_REPORT_LENGTH:
        raise InputError(f"report is {len(data)} bytes; the limit is {MAX_REPORT_LENGTH}")
    return bytes(data)


def looks_like_json(data: bytes) -> bool:
    head = data.lstrip()[:1]
    return head in (b"[", b"{")


def load_evidence(data: bytes, *, certs: bytes | None = None) -> tuple[DeviceEvidence, ...]:
    """Any supported form -> evidence list.

    JSON carries its own chains, so ``certs`` must then be None (two sources of the chain would
    be ambiguous). A bare report (binary or hex) needs ``certs``: the device's PEM chain.
    """
    if len(data) > MAX_EVIDENCE_FILE_BYTES:
        raise InputError(f"evidence is {len(data)} bytes; the limit is {MAX_EVIDENCE_FILE_BYTES}")
    if looks_like_json(data):
        if certs is not None:
            raise InputError("the evidence JSON carries its own certificate chains; drop --certs")
        return load_sdk_json(data)
    if certs is None:
        raise InputError("a bare report needs its certificate chain (--certs PEM_FILE)")
    chain = load_pem_chain(certs)
    return (
        DeviceEvidence(index=0, arch=None, report_bytes=decode_report_bytes(data), chain=chain),
    )
