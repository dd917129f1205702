"""Where evidence comes from, behind two small interfaces.

* ``GpuEvidenceSource.collect(nonce32)`` returns one ``DeviceEvidenceIn`` per GPU (report over
  the given SPDM nonce + device certificate chain) and ``cc_state()`` the CC / DevTools flags,
  which NVML reports outside the signed report.
* ``CpuEvidenceSource.collect(report_data64)`` returns the CPU TEE's report (SNP) or quote (TDX).

Real sources: NVML via ``nvidia-ml-py`` (the ``lessee[nvml]`` extra) and the Linux configfs-tsm
report interface (``/sys/kernel/config/tsm/report``, kernels >= 6.7), for SEV-SNP guests
(provider ``sev_guest``) and TDX guests (``tdx_guest``). Neither hardware hands the guest
everything the broker checks, so the operator supplies the rest and the source attaches it:
AMD's CRL for SNP (``crl``), Intel's collateral for TDX (``tdx_collateral``: TCB Info, QE
Identity, PCK and root CA CRLs, from Intel PCS or the platform's PCCS), because a quote without
collateral can never pass the broker's verification. Which TEE this guest is shows only in
configfs-tsm's ``provider``, so ``TsmCpuSource`` reads it when it is made and refuses inputs
that do not fit (``TeeMismatchError``) before anything is attested.

configfs-tsm only: the older SEV-SNP ioctls on ``/dev/sev-guest`` pass the kernel buffer
*addresses*, which ``fcntl.ioctl`` cannot give without ``ctypes`` and a fake cannot test, and
their layout and retry rules changed across the kernels that lack configfs-tsm (the reasons in
full: docs/broker.md, "Running the agent").

Each source raises ``HardwareUnavailableError`` with one clear sentence when the hardware is
absent or not in confidential-computing mode, so ``lessee agent`` can say what is missing.
Emulated sources for machines without CC hardware live in ``agent.emulation``.
"""

from __future__ import annotations

import errno
import importlib
import itertools
import logging
import os
import secrets
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from attest.bundle import MAX_ITEM_BYTES, DeviceEvidenceIn, SnpEvidenceIn, TdxEvidenceIn
from attest.errors import InputError, LesseeError, ParseError
from attest.snp.report import REPORT_SIZE as SNP_REPORT_SIZE
from attest.snp.verify import MAX_AMD_CERT_INPUT_BYTES, MAX_CRL_BYTES
from attest.tdx.collateral import MAX_COLLATERAL_JSON_BYTES, parse_collateral_json
from attest.tdx.quote import MAX_QUOTE_BUFFER_BYTES

_log = logging.getLogger(__name__)

TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")
#: configfs-tsm outblobs are a report (1184 B SNP) or a quote (~5-8 KiB TDX); certs up to 64 KiB.
MAX_TSM_BLOB_BYTES = 256 * 1024

#: GHCB spec (56421) 4.1.8.1 certificate table entry: GUID (16 bytes), offset, length (u32 LE).
SNP_CERT_TABLE_ENTRY = struct.Struct("<16sII")
#: Entries before the terminator. A host has four kinds to give (VCEK or VLEK, ASK, ARK) and may
#: add a few of its own (a CRL, platform information); more than this is not a table.
MAX_SNP_CERT_TABLE_ENTRIES = 16
#: The GUIDs the GHCB spec assigns, in RFC 4122 (big-endian) byte order as they appear in the
#: table: go-sev-guest compares the raw 16 bytes with ``uuid.Parse`` output, virtee/sev spells
#: the same bytes out. Other GUIDs (a CRL, vendor data) are bounds-checked and then dropped.
SNP_CERT_GUIDS: dict[bytes, str] = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes: "VCEK",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes: "VLEK",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes: "ASK",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes: "ARK",
}


class HardwareUnavailableError(LesseeError):
    """The requested evidence source is not present or not in CC mode here."""


@dataclass(frozen=True)
class CcState:
    cc_mode_on: bool
    devtools_on: bool


class GpuEvidenceSource(Protocol):
    def collect(self, nonce: bytes) -> tuple[DeviceEvidenceIn, ...]: ...
    def cc_state(self) -> CcState: ...
    #: How many GPUs ``collect`` will report on: read before the binding is derived (a
    #: version-2 binding binds the count), compared with what ``collect`` returned after.
    def gpu_count(self) -> int: ...


class CpuEvidenceSource(Protocol):
    def collect(self, report_data: bytes) -> SnpEvidenceIn | TdxEvidenceIn: ...


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise HardwareUnavailableError(message)


def _nvml_blob(buffer: Any, size: int, index: int, what: str) -> bytes:
    """The ``size`` bytes NVML says it wrote into ``buffer``: none, or more than the buffer
    holds (a slice would cut them silently), is a driver fault, said here rather than as a
    refusal from the broker after the nonce is spent."""
    _require(
        0 < size <= len(buffer),
        f"NVML returned a {what} of {size} bytes for GPU {index} (its buffer holds "
        f"{len(buffer)}): a driver fault",
    )
    return bytes(buffer[:size])


class NvmlGpuSource:
    """GPUs through NVML (``pip install 'lessee[nvml]'``), inside a CC VM with the GPUs in CC mode."""

    def __init__(self) -> None:
        try:
            self._nvml: Any = importlib.import_module("pynvml")
        except ImportError:
            raise HardwareUnavailableError(
                "NVML bindings not installed (pip install 'lessee[nvml]')"
            ) from None
        try:
            self._nvml.nvmlInit()
        except Exception as exc:  # NVMLError_* subclasses; no driver, no GPU
            raise HardwareUnavailableError(f"NVML could not start: {exc}") from None

    def _call(self, name: str, *args: Any) -> Any:
        """One NVML call; an NVML error (``NotSupported`` from a GPU or driver without
        confidential computing, ``FunctionNotFound`` from an older driver) becomes one typed
        sentence naming the call, so ``lessee agent`` says what is missing instead of failing
        with an untyped exception."""
        try:
            return getattr(self._nvml, name)(*args)
        except Exception as exc:  # pynvml's NVMLError_* family (no common base we can import)
            raise HardwareUnavailableError(
                f"NVML {name} failed ({exc}): no GPU with confidential computing here, or the "
                "driver does not support it"
            ) from None

    def cc_state(self) -> CcState:
        state = self._call("nvmlSystemGetConfComputeState")
        on = int(getattr(state, "ccFeature", 0)) == getattr(
            self._nvml, "NVML_CC_SYSTEM_FEATURE_ENABLED", 1
        )
        devtools = int(getattr(state, "devToolsMode", 1)) == getattr(
            self._nvml, "NVML_CC_SYSTEM_DEVTOOLS_MODE_ON", 1
        )
        return CcState(cc_mode_on=on, devtools_on=devtools)

    def gpu_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def collect(self, nonce: bytes) -> tuple[DeviceEvidenceIn, ...]:
        _require(len(nonce) == 32, "GPU nonce must be 32 bytes")
        state = self.cc_state()
        _require(
            state.cc_mode_on,
            "GPUs are not in confidential-computing mode (nvidia-smi conf-compute -f on)",
        )
        count = self.gpu_count()
        _require(count > 0, "no NVIDIA GPU found")
        out = []
        for i in range(count):
            handle = self._call("nvmlDeviceGetHandleByIndex", i)
            report = self._call("nvmlDeviceGetConfComputeGpuAttestationReport", handle, nonce)
            certs = self._call("nvmlDeviceGetConfComputeGpuCertificate", handle)
            report_bytes = _nvml_blob(
                report.attestationReport, report.attestationReportSize, i, "attestation report"
            )
            chain = _nvml_blob(
                certs.attestationCertChain, certs.attestationCertChainSize, i, "certificate chain"
            )
            arch_code = int(self._call("nvmlDeviceGetArchitecture", handle))
            arch = {9: "HOPPER", 10: "BLACKWELL"}.get(arch_code, f"ARCH{arch_code}")
            out.append(
                DeviceEvidenceIn(arch=arch, report=report_bytes, certificate_chain_pem=chain)
            )
        return tuple(out)


class TeeMismatchError(InputError):
    """What the operator supplied does not fit the TEE this guest is (collateral for the other
    vendor, or none where the broker cannot verify without it).

    An ``InputError`` (``lessee agent`` exit 2): the fix is on the command line, and it is found
    before the broker is asked for anything, not after a refusal the operator must decode.
    """


#: Where the operator gets each kind of supplement; said in every message that asks for one.
TDX_COLLATERAL_SOURCE = (
    "Intel PCS (TCB Info for the platform's FMSPC and QE Identity under "
    "/tdx/certification/v4/, the PCK CRL and Intel's root CA CRL) or the platform's PCCS, "
    "assembled as one QuoteCollateralV3 JSON document, the form dcap-qvl and PCCS clients store"
)
#: The broker takes at most this much collateral JSON: its gRPC and bundle limit per item
#: (``MAX_ITEM_BYTES``) is below the parser's own (``MAX_COLLATERAL_JSON_BYTES``).
MAX_TDX_COLLATERAL_BYTES = min(MAX_ITEM_BYTES, MAX_COLLATERAL_JSON_BYTES)


def check_tdx_collateral(data: bytes) -> bytes:
    """``data`` if it is TDX collateral in the form the broker verifies, else ``InputError``.

    Only the structure is checked (``parse_collateral_json``: the nine QuoteCollateralV3 keys,
    signed documents, CRLs and issuer chains that decode); signatures, freshness and whether it
    fits this platform's quote are the broker's checks, as of its own time. A wrong or truncated
    file is still caught here, when the agent starts, not after the broker has spent a nonce.
    """
    if not 0 < len(data) <= MAX_TDX_COLLATERAL_BYTES:
        raise InputError(
            f"the TDX collateral must be 1..{MAX_TDX_COLLATERAL_BYTES} bytes, got {len(data)}"
        )
    try:
        parse_collateral_json(data)
    except ParseError as exc:
        raise InputError(
            f"not TDX collateral in the broker's format (QuoteCollateralV3 JSON): {exc}"
        ) from None
    return bytes(data)


class TsmCpuSource:
    """SEV-SNP or TDX evidence through configfs-tsm (Linux >= 6.7).

    The guest's TEE is read from configfs-tsm's ``provider`` when the source is made, so inputs
    for the wrong TEE are refused (``TeeMismatchError``) before the agent talks to the broker.

    ``crl`` (SEV-SNP only): AMD's CRL for this CPU's product and signing key (KDS
    ``/vcek/v1/<product>/crl``, or ``/vlek/v1/<product>/crl`` when the report is VLEK-signed;
    DER or PEM), attached to every SNP report. The guest cannot get it from the hardware
    (configfs-tsm offers none), so the operator supplies it (``lessee agent --amd-crl``);
    without it the broker's default policy (``missing_revocation: reject``) refuses the CPU.

    ``tdx_collateral`` (TDX, required): Intel's collateral for this platform as QuoteCollateralV3
    JSON (``check_tdx_collateral``), attached unchanged to every quote. configfs-tsm gives only
    the quote, and the broker verifies a quote only with its collateral, so a TDX guest without
    it is refused here rather than sending evidence that can only be refused.
    """

    def __init__(
        self,
        root: Path = TSM_REPORT_DIR,
        *,
        crl: bytes | None = None,
        tdx_collateral: bytes | None = None,
    ) -> None:
        if crl is not None and not 0 < len(crl) <= MAX_CRL_BYTES:
            raise InputError(f"the AMD CRL must be 1..{MAX_CRL_BYTES} bytes, got {len(crl)}")
        if crl is not None and tdx_collateral is not None:
            raise TeeMismatchError(
                "an AMD CRL (SEV-SNP) and TDX collateral were both given; a guest is one or the "
                "other"
            )
        collateral = None if tdx_collateral is None else check_tdx_collateral(tdx_collateral)
        _require(
            root.is_dir(),
            f"{root} not present: not a SEV-SNP/TDX guest, or the kernel lacks configfs-tsm "
            "(Linux >= 6.7; lessee does not use /dev/sev-guest, see docs/broker.md)",
        )
        self._root = root
        self._crl = None if crl is None else bytes(crl)
        self._tdx_collateral = collateral
        self.provider = self._probe_provider()

    def _entry(self) -> Path:
        """A new report entry; the kernel's refusal to make one, as one sentence that says what
        to do (``_entry_refused``)."""
        entry = self._root / f"lessee-{secrets.token_hex(8)}"
        try:
            entry.mkdir()
        except OSError as exc:
            raise _entry_refused(self._root, exc) from None
        return entry

    def _probe_provider(self) -> str:
        """``sev_guest`` or ``tdx_guest``, from an entry made and removed for the purpose
        (nothing is requested: configfs-tsm generates only when ``outblob`` is read); then the
        operator's supplements are checked against it."""
        entry = self._entry()
        try:
            provider = _provider(entry)
        finally:
            _remove(entry)
        if provider == "tdx_guest":
            if self._crl is not None:
                raise TeeMismatchError(
                    "this is a TDX guest (configfs-tsm provider tdx_guest); an AMD CRL "
                    "(--amd-crl) is for SEV-SNP guests"
                )
            self._collateral()
        elif self._tdx_collateral is not None:  # sev_guest
            raise TeeMismatchError(
                "this is a SEV-SNP guest (configfs-tsm provider sev_guest); TDX collateral "
                "(--tdx-collateral) is for TDX guests"
            )
        return provider

    def _collateral(self) -> bytes:
        if self._tdx_collateral is None:
            raise TeeMismatchError(
                "this is a TDX guest: the broker verifies its quote only with Intel's "
                "collateral, which the guest cannot get from the hardware; pass it with "
                f"--tdx-collateral FILE (from {TDX_COLLATERAL_SOURCE})"
            )
        return self._tdx_collateral

    def collect(self, report_data: bytes) -> SnpEvidenceIn | TdxEvidenceIn:
        """One report for ``report_data``; the provider is checked before anything is requested.

        SEV-SNP: ``outblob`` is the report and ``auxblob`` the host's certificate table, split
        into one certificate per item (``parse_snp_cert_table``) because the broker loads each
        item as one DER or PEM input. ``auxblob`` is read whenever it exists rather than when
        its ``st_size`` is non-zero (a configfs attribute's size need not be the blob's); an
        empty read means the host supplied no certificates. The AMD CRL given to the constructor,
        if any, goes with the report.
        TDX: ``outblob`` is the quote (the kernel's ``tdx_guest`` provider hands over exactly the
        quote's bytes, no capture buffer), read up to the largest quote the broker parses
        (``MAX_QUOTE_BUFFER_BYTES``) and passed on unchanged with the collateral given to the
        constructor. Neither is checked here beyond that: the broker verifies both.
        """
        _require(len(report_data) == 64, "report data must be 64 bytes")
        entry = self._entry()
        try:
            provider = _provider(entry)
            _require(
                provider == self.provider,
                f"configfs-tsm provider changed from {self.provider!r} to {provider!r}",
            )
            if provider == "tdx_guest":
                collateral = self._collateral()
                quote = _generate(entry, report_data, "TDX quote", MAX_QUOTE_BUFFER_BYTES)
                _require(bool(quote), "configfs-tsm returned an empty TDX quote")
                return TdxEvidenceIn(quote=quote, collateral_json=collateral)
            _set_privlevel(entry)
            outblob = _generate(entry, report_data, "SEV-SNP report", MAX_TSM_BLOB_BYTES)
            _require(
                len(outblob) == SNP_REPORT_SIZE,
                f"configfs-tsm returned a {len(outblob)}-byte SEV-SNP report; a report is "
                f"{SNP_REPORT_SIZE} bytes (a guest driver or firmware fault)",
            )
            aux = entry / "auxblob"
            try:
                aux_bytes = _read_bounded(aux) if aux.exists() else b""
            except OSError as exc:
                raise _generation_failed("SEV-SNP certificate table (auxblob)", exc) from None
            certs = parse_snp_cert_table(aux_bytes)
            return SnpEvidenceIn(report=outblob, certificates=tuple(certs.values()), crl=self._crl)
        finally:
            _remove(entry)


#: mkdir errors that mean configfs-tsm has no TEE provider to make the entry for: the kernel's
#: ``tsm_report_make_item`` answers ENXIO when no provider is registered.
_NO_PROVIDER_ERRNOS = frozenset({errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP})
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _entry_refused(root: Path, exc: OSError) -> HardwareUnavailableError:
    """Why a report entry could not be made, as what the operator can do about it."""
    if exc.errno in _NO_PROVIDER_ERRNOS:
        return HardwareUnavailableError(
            f"configfs-tsm at {root} has no confidential-computing provider registered: this is "
            "not a SEV-SNP/TDX guest, or its guest driver (sev-guest or tdx-guest) is not loaded"
        )
    if exc.errno in _PERMISSION_ERRNOS:
        return HardwareUnavailableError(
            f"permission denied making a configfs-tsm report entry in {root}: run the agent as "
            "root (or give its user write access to the report directory)"
        )
    return HardwareUnavailableError(
        f"configfs-tsm at {root} refused a report entry ({exc.strerror or type(exc).__name__})"
    )


def _generation_failed(what: str, exc: OSError) -> HardwareUnavailableError:
    """An I/O error while configfs-tsm makes the report: the firmware or host refused it
    (EIO), or another process changed the entry meanwhile (EBUSY); retrying may work."""
    return HardwareUnavailableError(
        f"configfs-tsm could not produce the {what} "
        f"({exc.strerror or type(exc).__name__}): the firmware or host refused the request, or "
        "another process used the same report entry; try again"
    )


#: The privilege levels an SEV-SNP report may be requested at (VMPL 0-3).
_MAX_PRIVLEVEL = 3


def _set_privlevel(entry: Path) -> None:
    """Request the SEV-SNP report at the guest's own VMPL.

    A new entry asks for VMPL 0. Under an SVSM the guest runs at a higher VMPL, which
    ``privlevel_floor`` names; the firmware refuses a report for a level below the caller's, so
    every request failed (EINVAL, said as "try again"). The broker's ``snp.allowed_vmpls``
    decides whether that level is acceptable. Without the attribute (no SVSM, older kernel)
    nothing is written."""
    floor_file = entry / "privlevel_floor"
    if not floor_file.exists():
        return
    try:
        text = _read_bounded(floor_file, 16).decode("ascii", "replace").strip()
    except OSError as exc:
        raise _generation_failed("SEV-SNP report (privlevel_floor)", exc) from None
    _require(
        text.isdigit() and int(text) <= _MAX_PRIVLEVEL,
        f"configfs-tsm privlevel_floor is {text[:16]!r}, not a VMPL 0..{_MAX_PRIVLEVEL}",
    )
    if int(text) == 0:
        return
    try:
        (entry / "privlevel").write_text(text)
    except OSError as exc:
        raise HardwareUnavailableError(
            f"configfs-tsm refused privlevel {text} (the guest's VMPL, from privlevel_floor): "
            f"{exc.strerror or type(exc).__name__}"
        ) from None


def _generate(entry: Path, report_data: bytes, what: str, limit: int) -> bytes:
    """Write ``inblob`` and read ``outblob`` (reading it is what makes the kernel ask the TEE)."""
    try:
        (entry / "inblob").write_bytes(report_data)
        return _read_bounded(entry / "outblob", limit)
    except OSError as exc:
        raise _generation_failed(what, exc) from None


def _remove(entry: Path) -> None:
    """Remove a report entry. A failure must not replace the report or the error in hand: the
    entry is left (a small kernel object, until someone removes it) and said on the log."""
    try:
        os.rmdir(entry)
    except OSError as exc:
        _log.warning("could not remove configfs-tsm entry %s (%s)", entry.name, exc.strerror)


def _provider(entry: Path) -> str:
    """The entry's provider, one of the two this source knows; anything else is hardware the
    agent cannot attest (``HardwareUnavailableError``)."""
    try:
        provider = (entry / "provider").read_text().strip()
    except FileNotFoundError:
        raise HardwareUnavailableError(
            "configfs-tsm report entries here have no provider attribute: no confidential-"
            "computing provider is registered (not a SEV-SNP/TDX guest, or sev-guest/tdx-guest "
            "not loaded), or the kernel's configfs-tsm predates it (Linux >= 6.7 needed)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, OSError) and exc.errno in _PERMISSION_ERRNOS:
            raise HardwareUnavailableError(
                "permission denied reading configfs-tsm's provider attribute: run the agent as root"
            ) from None
        why = exc.strerror if isinstance(exc, OSError) else "not text"
        raise HardwareUnavailableError(
            f"configfs-tsm provider attribute unreadable ({why})"
        ) from None
    if provider not in ("sev_guest", "tdx_guest"):
        raise HardwareUnavailableError(f"unknown configfs-tsm provider {provider!r}")
    return provider


def parse_snp_cert_table(blob: bytes) -> dict[str, bytes]:
    """The certificates of a SEV-SNP certificate table, by kind (``VCEK``, ``VLEK``, ``ASK``,
    ``ARK``), in table order; ``{}`` for an empty blob (the host supplied none).

    This is what configfs-tsm's ``auxblob`` holds for the ``sev_guest`` provider: the GHCB spec
    (56421) 4.1.8.1 table of 24-byte entries (GUID, u32 LE offset, u32 LE length; offsets from
    the start of the blob), ended by an all-zero entry, followed by the certificates. The
    certificate bytes are passed through unchanged (DER from real hosts; the broker accepts DER
    or PEM and verifies them). Strict, because a table that breaks these rules was not made by a
    correct host and guessing what it meant could pair a report with the wrong certificate:

    * at most ``MAX_SNP_CERT_TABLE_ENTRIES`` entries, then the all-zero terminator (required; an
      all-zero GUID with a non-zero offset or length is refused);
    * every entry's range lies inside the blob and after the table (terminator included), and
      no two non-empty ranges overlap; gaps and trailing padding are allowed;
    * a known kind appears at most once, is not empty and is at most
      ``MAX_AMD_CERT_INPUT_BYTES``; entries with other GUIDs are checked the same way for
      bounds and then dropped (hosts may add a CRL or platform data the broker does not use).

    Anything else raises ``ParseError`` with the offending entry's offset.
    """
    if not blob:
        return {}
    size = SNP_CERT_TABLE_ENTRY.size
    entries: list[tuple[int, bytes, int, int]] = []  # (entry offset, guid, data offset, length)
    pos = 0
    while True:
        if pos + size > len(blob):
            raise ParseError(
                "SEV-SNP certificate table ends without its all-zero terminator entry",
                offset=pos,
                field="auxblob",
            )
        guid, offset, length = SNP_CERT_TABLE_ENTRY.unpack_from(blob, pos)
        if guid == bytes(16):
            if offset or length:
                raise ParseError(
                    "SEV-SNP certificate table entry has a zero GUID but a non-zero offset or "
                    "length",
                    offset=pos,
                    field="auxblob",
                )
            break
        if len(entries) == MAX_SNP_CERT_TABLE_ENTRIES:
            raise ParseError(
                f"SEV-SNP certificate table has more than {MAX_SNP_CERT_TABLE_ENTRIES} entries",
                offset=pos,
                field="auxblob",
            )
        entries.append((pos, guid, offset, length))
        pos += size
    table_end = pos + size
    out: dict[str, bytes] = {}
    ranges: list[tuple[int, int, int]] = []  # (data offset, end, entry offset)
    for at, guid, offset, length in entries:
        kind = SNP_CERT_GUIDS.get(guid)
        label = kind or str(uuid.UUID(bytes=guid))
        if offset < table_end or offset + length > len(blob):
            raise ParseError(
                f"SEV-SNP certificate table entry {label}: bytes [{offset}, {offset + length}) "
                f"are not between the table's end ({table_end}) and the blob's end ({len(blob)})",
                offset=at,
                field="auxblob",
            )
        if length:
            ranges.append((offset, offset + length, at))
        if kind is None:
            continue
        if kind in out:
            raise ParseError(
                f"SEV-SNP certificate table has two {kind} entries", offset=at, field="auxblob"
            )
        if not 0 < length <= MAX_AMD_CERT_INPUT_BYTES:
            raise ParseError(
                f"SEV-SNP certificate table entry {kind} is {length} bytes; it must be 1.."
                f"{MAX_AMD_CERT_INPUT_BYTES}",
                offset=at,
                field="auxblob",
            )
        out[kind] = blob[offset : offset + length]
    ranges.sort()
    for (_, prev_end, _), (start, _, at) in itertools.pairwise(ranges):
        if start < prev_end:
            raise ParseError(
                "SEV-SNP certificate table entries overlap", offset=at, field="auxblob"
            )
    return out


def _read_bounded(path: Path, limit: int = MAX_TSM_BLOB_BYTES) -> bytes:
    with path.open("rb") as f:
        data = f.read(limit + 1)
    _require(len(data) <= limit, f"{path} is larger than {limit} bytes")
    return data
