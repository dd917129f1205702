"""Which RIM belongs to a device: NVIDIA's RIM ids, and a pure collection indexed by them.

NVIDIA's RIM service names RIMs by an id built from the (signed) report:

* Hopper driver: ``NV_GPU_DRIVER_GH100_<driver version>``;
* Blackwell driver: ``NV_GPU_CC_DRIVER_<CHIP_INFO>_<driver version>``, ``CHIP_INFO`` being opaque
  field 35 (``GB100``, ``GB202``...); NVIDIA's C++ SDK falls back to ``GB100`` without it;
* GPU VBIOS: ``NV_GPU_VBIOS_<PROJECT>_<PROJECT_SKU>_<CHIP_SKU>_<VBIOS version, no dots, upper>``;
* NVSwitch BIOS: ``NV_SWITCH_BIOS_<PROJECT>_<PROJECT_SKU>_<CHIP_SKU>_<version>``; LS10 switches do
  not report their project, and nvtrust uses the fixed ``5612_0002_890``.

The RIM itself does not carry that id: its SWID ``tagId`` is a SHA-384 (of ``<product>_<version>``
for driver RIMs) and a VBIOS RIM names neither project nor SKU. So a collection knows a RIM's id
either from where it came (a file name or the service id it was fetched under) or, for a driver
RIM, from its ``product`` and ``colloquialVersion``; a VBIOS RIM given without a name is found by
its version alone, and only while that version is unambiguous.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from attest.errors import InputError
from attest.nvidia.rim_parse import Rim, RimKind, RimParseError, parse_rim

#: nvtrust's fixed LS10 NVSwitch identity (``nv_switch_verifier`` settings).
LS10_PROJECT = "5612"
LS10_PROJECT_SKU = "0002"
LS10_CHIP_SKU = "890"
#: NVIDIA's C++ SDK uses this chip when a Blackwell report has no CHIP_INFO field.
BLACKWELL_DEFAULT_CHIP = "GB100"

#: RIM ids are short; anything longer is refused before it is used in a URL or a file name.
MAX_RIM_ID_CHARS = 128
#: Parsed RIMs a ``RimParseCache`` keeps by default. A fleet runs a handful of (driver, VBIOS)
#: version pairs, two RIMs each; 128 covers that many times over while bounding memory to
#: 128 x ``MAX_RIM_BYTES`` (plus the parsed form) even if every entry is a hostile maximum.
DEFAULT_RIM_PARSE_CACHE_ENTRIES = 128
#: Answers a ``RimCollection`` remembers by id: two ids per device of a set (at most a few
#: dozen devices); the bound only keeps a caller asking for endless ids from growing it.
MAX_REMEMBERED_ANSWERS = 256

_SAFE_ID = re.compile(r"[A-Z0-9][A-Z0-9_.\-]*")
_TOKEN = re.compile(r"[A-Z0-9]{1,16}")
_DRIVER_VERSION = re.compile(r"[0-9]{1,5}(\.[0-9]{1,5}){1,3}")
_VBIOS_DOTTED = re.compile(r"[0-9A-F]{2}(\.[0-9A-F]{2}){4}")
_VBIOS_PLAIN = re.compile(r"[0-9A-F]{10}")

_ID_DRIVER = re.compile(r"NV_GPU_DRIVER_([A-Z0-9]{1,16})_(" + _DRIVER_VERSION.pattern + ")")
_ID_CC_DRIVER = re.compile(r"NV_GPU_CC_DRIVER_([A-Z0-9]{1,16})_(" + _DRIVER_VERSION.pattern + ")")
_ID_VBIOS = re.compile(
    r"NV_(GPU_VBIOS|SWITCH_BIOS)_([A-Z0-9]{1,16})_([A-Z0-9]{1,16})_([A-Z0-9]{1,16})_([0-9A-F]{10})"
)


class RimSelectionError(InputError):
    """A RIM id is malformed, or the RIMs at hand do not pick out exactly one RIM for it."""


class RimSource(Protocol):
    """Anything that can hand out RIM bytes by NVIDIA RIM id (``None``: not known here).

    Bytes only: whatever the source, the caller parses and verifies them itself.
    """

    def rim_bytes(self, rim_id: str) -> bytes | None: ...


def _clean(value: str, what: str) -> str:
    """Report strings are NUL-padded ASCII; ids use them upper-cased and trimmed."""
    cleaned = value.replace("\x00", "").strip().upper()
    if _TOKEN.fullmatch(cleaned) is None:
        raise RimSelectionError(f"{what} {value[:40]!r} is not 1-16 letters and digits")
    return cleaned


def _driver_version(value: str) -> str:
    cleaned = value.replace("\x00", "").strip().lower()
    if _DRIVER_VERSION.fullmatch(cleaned) is None:
        raise RimSelectionError(f"driver version {value[:40]!r} is not like 550.90.07")
    return cleaned


def _vbios_version(value: str) -> str:
    cleaned = value.replace("\x00", "").strip().upper()
    if _VBIOS_DOTTED.fullmatch(cleaned):
        return cleaned.replace(".", "")
    if _VBIOS_PLAIN.fullmatch(cleaned):
        return cleaned
    raise RimSelectionError(f"VBIOS version {value[:40]!r} is not like 96.00.5e.00.01")


def driver_rim_id(*, arch: str, chip_info: str | None, driver_version: str) -> str:
    """NVIDIA's id of the driver RIM for a GPU of ``arch`` (``HOPPER`` or ``BLACKWELL``)."""
    version = _driver_version(driver_version)
    a = arch.strip().upper()
    if a == "HOPPER":
        return f"NV_GPU_DRIVER_GH100_{version}"
    if a == "BLACKWELL":
        given = (chip_info or "").replace("\x00", "").strip()
        chip = _clean(given, "chip info") if given else BLACKWELL_DEFAULT_CHIP
        return f"NV_GPU_CC_DRIVER_{chip}_{version}"
    raise RimSelectionError(f"no driver RIM naming rule for architecture {arch[:20]!r}")


def vbios_rim_id(*, project: str, project_sku: str, chip_sku: str, vbios_version: str) -> str:
    """NVIDIA's id of the VBIOS RIM (``96.00.5e.00.01`` becomes ``96005E0001``)."""
    return (
        f"NV_GPU_VBIOS_{_clean(project, 'project')}_{_clean(project_sku, 'project SKU')}_"
        f"{_clean(chip_sku, 'chip SKU')}_{_vbios_version(vbios_version)}"
    )


def switch_bios_rim_id(
    *,
    bios_version: str,
    project: str = LS10_PROJECT,
    project_sku: str = LS10_PROJECT_SKU,
    chip_sku: str = LS10_CHIP_SKU,
) -> str:
    """NVIDIA's id of an NVSwitch BIOS RIM (defaults: the LS10 identity nvtrust uses)."""
    return (
        f"NV_SWITCH_BIOS_{_clean(project, 'project')}_{_clean(project_sku, 'project SKU')}_"
        f"{_clean(chip_sku, 'chip SKU')}_{_vbios_version(bios_version)}"
    )


@dataclass(frozen=True)
class RimIdInfo:
    """What a RIM id says about the RIM it names."""

    rim_id: str
    kind: RimKind
    #: the chip the id names (driver ids only; VBIOS ids name a board instead)
    product: str | None
    #: version as in ``version_key``
    version: str


def version_key(kind: RimKind, version: str) -> str:
    """A RIM or report version in the form ids use: driver lower-case, VBIOS no dots upper."""
    if kind == "driver":
        return version.strip().lower()
    return version.strip().upper().replace(".", "")


def canonical_rim_id(rim_id: str) -> str:
    """Upper-cased, validated id (safe in URLs and file names); RimSelectionError otherwise."""
    cleaned = rim_id.strip().upper()
    if len(cleaned) > MAX_RIM_ID_CHARS or _SAFE_ID.fullmatch(cleaned) is None:
        raise RimSelectionError(f"not a RIM id: {rim_id[:60]!r}")
    return cleaned


def parse_rim_id(rim_id: str) -> RimIdInfo:
    """Split an NVIDIA RIM id into kind, product and version; RimSelectionError if unknown."""
    cid = canonical_rim_id(rim_id)
    m = _ID_CC_DRIVER.fullmatch(cid) or _ID_DRIVER.fullmatch(cid)
    if m is not None:
        return RimIdInfo(rim_id=cid, kind="driver", product=m.group(1), version=m.group(2).lower())
    m = _ID_VBIOS.fullmatch(cid)
    if m is not None:
        return RimIdInfo(rim_id=cid, kind="vbios", product=None, version=m.group(5))
    raise RimSelectionError(f"not an NVIDIA GPU/NVSwitch RIM id: {rim_id[:60]!r}")


def rim_matches_id(info: RimIdInfo, rim: Rim) -> bool:
    """Whether ``rim``'s content (kind, product for a driver, version) is what the id names:
    wherever a RIM is found by its id (a folder, a service, a cache), one that says otherwise is
    not the RIM asked for."""
    if rim.kind != info.kind or version_key(rim.kind, rim.version) != info.version:
        return False
    return info.product is None or rim.product.upper() == info.product


def content_rim_ids(rim: Rim) -> tuple[str, ...]:
    """The ids a RIM answers to by its content alone (driver RIMs only; see the module doc)."""
    if rim.kind != "driver":
        return ()
    product = rim.product.strip().upper()
    version = version_key("driver", rim.version)
    return (f"NV_GPU_DRIVER_{product}_{version}", f"NV_GPU_CC_DRIVER_{product}_{version}")


class RimParseCache:
    """Parsed RIMs by their exact bytes, for callers that see the same RIMs again and again.

    A broker gets the same driver and VBIOS RIMs with every attestation of a fleet (eight GPUs
    of one server carry the same two); parsing one costs about as much as two signature checks.
    ``parse_rim`` is deterministic and does not depend on time, so a hit is exactly what a fresh
    parse would return. A parse failure raises and is never remembered. Bounded (oldest out
    first), thread-safe; ``hits`` and ``misses`` count lookups.
    """

    def __init__(self, max_entries: int = DEFAULT_RIM_PARSE_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise InputError("a RIM parse cache needs room for at least one entry")
        self._max = max_entries
        self._entries: OrderedDict[bytes, Rim] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def parse(self, data: bytes) -> Rim:
        """``parse_rim(data)``, answered from memory when these exact bytes parsed before."""
        key = bytes(data)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return hit
            self.misses += 1
        rim = parse_rim(key)  # RimParseError propagates; nothing is stored for it
        with self._lock:
            self._entries[key] = rim
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return rim

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class RimCollection:
    """RIMs in memory, looked up by NVIDIA RIM id. Pure: bytes in, bytes out.

    ``rims`` are RIMs known by content only; ``named`` pairs carry the id a RIM came under
    (a file name, a service id), which must agree with the RIM's kind, version and product.
    Unparseable or disagreeing inputs are left out and listed in ``skipped`` with the reason;
    nothing here is trusted — the caller verifies whatever it gets.

    Identical inputs are parsed once (every GPU of a server staples the same two RIMs), and a
    ``parse_cache`` shared between collections parses each distinct RIM once per process.
    """

    def __init__(
        self,
        rims: Iterable[bytes] = (),
        *,
        named: Iterable[tuple[str, bytes]] = (),
        parse_cache: RimParseCache | None = None,
    ) -> None:
        self._named: dict[str, list[Rim]] = {}
        self._unnamed: list[Rim] = []
        self._skipped: list[tuple[str, str]] = []
        self._answers: dict[str, bytes | None] = {}
        # this construction's parses, by exact bytes: a Rim, or why the bytes were refused
        parsed: dict[bytes, Rim | str] = {}
        unnamed_seen: set[bytes] = set()
        for n, data in enumerate(rims):
            rim = self._parse(data, f"rims[{n}]", parsed, parse_cache)
            if rim is not None and rim.raw not in unnamed_seen:
                unnamed_seen.add(rim.raw)
                self._unnamed.append(rim)
        for label, data in named:
            try:
                info = parse_rim_id(label)
            except RimSelectionError as exc:
                self._skipped.append((label, str(exc)))
                continue
            rim = self._parse(data, label, parsed, parse_cache)
            if rim is None:
                continue
            if not rim_matches_id(info, rim):
                self._skipped.append(
                    (
                        label,
                        f"named {info.rim_id} but holds a {rim.kind} RIM for {rim.product} "
                        f"{rim.version}",
                    )
                )
                continue
            bucket = self._named.setdefault(info.rim_id, [])
            if all(r.raw != rim.raw for r in bucket):
                bucket.append(rim)

    def _parse(
        self,
        data: bytes,
        label: str,
        parsed: dict[bytes, Rim | str],
        cache: RimParseCache | None,
    ) -> Rim | None:
        key = bytes(data)
        known = parsed.get(key)
        if known is None:
            try:
                known = cache.parse(key) if cache is not None else parse_rim(key)
            except RimParseError as exc:
                known = str(exc)
            parsed[key] = known
        if isinstance(known, str):
            self._skipped.append((label, known))
            return None
        return known

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        """(input label, reason) for each input that was left out."""
        return tuple(self._skipped)

    @property
    def rims(self) -> tuple[Rim, ...]:
        seen: dict[bytes, Rim] = {}
        for bucket in self._named.values():
            for r in bucket:
                seen.setdefault(r.raw, r)
        for r in self._unnamed:
            seen.setdefault(r.raw, r)
        return tuple(seen.values())

    def ids(self) -> tuple[str, ...]:
        """Every id some RIM here answers to (named, and driver RIMs by content)."""
        out = set(self._named)
        for r in self._unnamed:
            out.update(content_rim_ids(r))
        return tuple(sorted(out))

    def get(self, rim_id: str) -> Rim | None:
        """The one RIM for ``rim_id``; None if none; RimSelectionError if several differ."""
        info = parse_rim_id(rim_id)
        named = self._named.get(info.rim_id, [])
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise RimSelectionError(
                f"{len(named)} different RIMs are named {info.rim_id}; keep only one"
            )
        found: dict[bytes, Rim] = {}
        for r in self._unnamed:
            if rim_matches_id(info, r):
                found.setdefault(r.raw, r)
        if len(found) > 1:
            raise RimSelectionError(
                f"{len(found)} different RIMs match {info.rim_id} by kind and version; "
                "name them by id to pick one"
            )
        return next(iter(found.values()), None)

    def rim_bytes(self, rim_id: str) -> bytes | None:
        # Every GPU of a server asks for the same two ids; the collection never changes once
        # built, so an answer (a RIM or none) is remembered per id. Errors are raised again.
        if rim_id in self._answers:
            return self._answers[rim_id]
        rim = self.get(rim_id)
        raw = None if rim is None else rim.raw
        if len(self._answers) < MAX_REMEMBERED_ANSWERS:
            self._answers[rim_id] = raw
        return raw

    def __len__(self) -> int:
        return len(self.rims)
