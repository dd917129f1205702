"""Where RIM bytes come from: local files, NVIDIA's RIM service (with a disk cache), or a chain.

Every source hands out bytes only. RIMs are public and signed, so caching them is safe, but a
cached or downloaded RIM is never trusted as such: the caller parses and verifies it
(``attest.nvidia.rim``) every time, as of the verification time.

NVIDIA's RIM service (``https://rim.attestation.nvidia.com/v1/rim/<id>``, as nvtrust and the
NVIDIA attestation SDK call it) answers a JSON object ``{"id", "rim", "sha256", "last_updated",
"rim_format", "request_id"}`` where ``rim`` is the base64 of the XML document; an unknown id is a
404.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from agent.fetching import http_fetch, read_cache_file, require_https, write_atomically
from attest.errors import InputError, VerificationError
from attest.jsonutil import load_json
from attest.nvidia.rim import (
    MAX_RIM_BYTES,
    RimCollection,
    RimParseError,
    RimSource,
    canonical_rim_id,
    parse_rim,
)
from attest.nvidia.rim_select import parse_rim_id, rim_matches_id

#: NVIDIA's public RIM service (nvtrust ``RIM_SERVICE_BASE_URL``).
NVIDIA_RIM_SERVICE_URL = "https://rim.attestation.nvidia.com/v1/rim/"
#: Seconds one request to the RIM service may take in all; nvtrust allows 10 per attempt.
DEFAULT_TIMEOUT_S = 10.0
#: A service answer larger than this is refused (base64 of a 256 KiB RIM plus JSON framing).
MAX_RESPONSE_BYTES = MAX_RIM_BYTES * 2
#: Files read from the folders given to DirectoryRimSource, at most (a RIM mirror holds hundreds).
MAX_DIRECTORY_FILES = 4096
#: File name endings read as RIMs.
RIM_SUFFIXES = (".swidtag", ".xml")

_log = logging.getLogger(__name__)

#: nvtrust's local file naming for VBIOS RIMs: ``<project>_<sku>_<chip sku>_<VER>_<label>``.
_NVTRUST_VBIOS_NAME = re.compile(
    r"([0-9A-Za-z]{1,16})_([0-9A-Za-z]{1,16})_([0-9A-Za-z]{1,16})_([0-9A-Fa-f]{10})(_[^/]*)?"
)


class RimFetchError(VerificationError):
    """The RIM service could not be asked or gave an unusable answer (the check is not possible)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="rim_unavailable")


def name_to_rim_id(file_name: str) -> str | None:
    """The RIM id a file name states, if it states one.

    ``NV_GPU_DRIVER_GH100_545.00.xml`` -> ``NV_GPU_DRIVER_GH100_545.00`` (NVIDIA's ids as names);
    ``1010_0200_882_96005E0001_PROD.swidtag`` -> ``NV_GPU_VBIOS_1010_0200_882_96005E0001``
    (nvtrust's sample names). Anything else: None (the RIM is then known by content only).
    """
    stem = file_name
    for suffix in RIM_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if stem.upper().startswith("NV_"):
        try:
            return canonical_rim_id(stem)
        except InputError:
            return None
    m = _NVTRUST_VBIOS_NAME.fullmatch(stem)
    if m is not None:
        project, sku, chip, version = (g.upper() for g in m.groups()[:4])
        return f"NV_GPU_VBIOS_{project}_{sku}_{chip}_{version}"
    return None


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_RIM_BYTES + 1)
    if len(data) > MAX_RIM_BYTES:
        raise InputError(f"{path}: larger than {MAX_RIM_BYTES} bytes; not a RIM")
    return data


class DirectoryRimSource:
    """RIMs from files and folders (``*.swidtag``, ``*.xml``; folders searched recursively).

    Each file is indexed by the id its name states (see ``name_to_rim_id``) and, for driver RIMs,
    by its content. Files read once, at construction; files that are not RIMs are listed in
    ``skipped``.
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        files: list[Path] = []
        for p in paths:
            path = Path(p)
            if path.is_dir():
                for f in sorted(path.rglob("*")):
                    if f.is_file() and f.name.lower().endswith(RIM_SUFFIXES):
                        files.append(f)
            elif path.is_file():
                files.append(path)
            else:
                raise InputError(f"{path}: no such RIM file or folder")
            if len(files) > MAX_DIRECTORY_FILES:
                raise InputError(f"more than {MAX_DIRECTORY_FILES} RIM files under {path}")
        unnamed: list[bytes] = []
        named: list[tuple[str, bytes]] = []
        skipped: list[tuple[str, str]] = []
        for f in files:
            try:
                data = _read_bounded(f)
            except InputError as exc:
                skipped.append((str(f), str(exc)))
                continue
            rim_id = name_to_rim_id(f.name)
            if rim_id is not None:
                named.append((rim_id, data))
            if rim_id is None or "_DRIVER_" in rim_id:
                # Driver RIMs also answer to the ids their content states. A VBIOS RIM named for
                # one board must not be found by version alone for another board.
                unnamed.append(data)
        self.files = tuple(files)
        self._collection = RimCollection(unnamed, named=named)
        self._skipped = tuple(skipped)

    @property
    def collection(self) -> RimCollection:
        return self._collection

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        return self._skipped + self._collection.skipped

    def rim_bytes(self, rim_id: str) -> bytes | None:
        return self._collection.rim_bytes(rim_id)


class OnlineRimSource:
    """NVIDIA's RIM service, with an optional on-disk cache (``<cache_dir>/<RIM id>.xml``).

    A cached file is returned without asking the service (RIMs for a given id do not change, and
    the caller re-verifies whatever it gets). Only answers that parse as a RIM are cached. The
    base URL must be https, except on loopback (tests).
    """

    def __init__(
        self,
        base_url: str = NVIDIA_RIM_SERVICE_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        require_https(base_url, "RIM service")
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = timeout
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def _cache_path(self, rim_id: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{rim_id}.xml"

    def _from_cache(self, rim_id: str) -> bytes | None:
        path = self._cache_path(rim_id)
        if path is None:
            return None
        try:
            # Not through a symlink (a shared cache directory's planted link is a miss, as in
            # the OCSP cache), and only a RIM that is the one the id names.
            data = read_cache_file(path, MAX_RIM_BYTES, what="RIM", follow_symlinks=False)
            if data is None:
                return None
            if not rim_matches_id(parse_rim_id(rim_id), parse_rim(data)):
                _log.warning("RIM cache entry %s holds another RIM; ignored", path.name)
                return None
        except (InputError, OSError):
            return None  # a damaged cache entry is refetched, never used
        return data

    def _store(self, rim_id: str, data: bytes) -> None:
        """Cache a RIM that was fetched and parsed. Best effort: a cache that cannot be written
        (read-only or full file system, permissions, a directory in the way) costs a fetch next
        time, and must not throw away the RIM in hand."""
        path = self._cache_path(rim_id)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, data, mode=0o644)  # RIMs are public, signed documents
        except OSError as exc:
            _log.warning("RIM cache entry %s not written (%s)", path.name, exc.strerror or exc)

    def _fetch(self, rim_id: str) -> bytes | None:
        url = self.base_url + urllib.parse.quote(rim_id, safe="")
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
        answer = http_fetch(
            request,
            timeout=self.timeout,
            limit=MAX_RESPONSE_BYTES,
            unreachable=lambda why: RimFetchError(f"RIM service unreachable for {rim_id}: {why}"),
        )
        if answer.status == 404:
            return None
        if not answer.ok:
            raise RimFetchError(f"RIM service answered HTTP {answer.status} for {rim_id}")
        if len(answer.body) > MAX_RESPONSE_BYTES:
            raise RimFetchError(
                f"RIM service answer for {rim_id} exceeds {MAX_RESPONSE_BYTES} bytes"
            )
        return decode_service_response(answer.body, rim_id)

    def rim_bytes(self, rim_id: str) -> bytes | None:
        cid = canonical_rim_id(rim_id)
        cached = self._from_cache(cid)
        if cached is not None:
            return cached
        data = self._fetch(cid)
        if data is not None:
            self._store(cid, data)
        return data


def decode_service_response(body: bytes, rim_id: str) -> bytes:
    """The RIM bytes in a RIM service answer; RimFetchError if the answer is not usable."""
    try:
        # the strict reader: nesting, huge integers and bad UTF-8 are refused, not raised raw
        doc = load_json(body, what=f"RIM service answer for {rim_id}")
    except InputError:
        raise RimFetchError(f"RIM service answer for {rim_id} is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rim"), str):
        raise RimFetchError(f"RIM service answer for {rim_id} has no 'rim' string")
    answered = doc.get("id")
    if not isinstance(answered, str) or answered.strip().upper() != rim_id.upper():
        raise RimFetchError(f"RIM service answered for {str(answered)[:60]!r}, not {rim_id}")
    fmt = doc.get("rim_format")
    if fmt is not None and fmt != "TCG":
        raise RimFetchError(f"RIM {rim_id} is in format {str(fmt)[:20]!r}; only TCG SWID is read")
    try:
        data = base64.b64decode(doc["rim"], validate=True)
    except (binascii.Error, ValueError):
        raise RimFetchError(f"RIM service answer for {rim_id}: 'rim' is not base64") from None
    try:
        rim = parse_rim(data)
    except RimParseError as exc:
        raise RimFetchError(f"RIM service answer for {rim_id} is not a valid RIM: {exc}") from None
    try:
        matches = rim_matches_id(parse_rim_id(rim_id), rim)
    except InputError:
        matches = False
    if not matches:
        raise RimFetchError(
            f"RIM service answer for {rim_id} holds a {rim.kind} RIM for "
            f"{rim.product[:40]!r} {rim.version[:40]!r}, not the RIM the id names"
        )
    return data


class ChainedRimSource:
    """Ask each source in turn; the first that knows the id answers."""

    def __init__(self, *sources: RimSource) -> None:
        if not sources:
            raise InputError("ChainedRimSource needs at least one source")
        self.sources = sources

    def rim_bytes(self, rim_id: str) -> bytes | None:
        for source in self.sources:
            data = source.rim_bytes(rim_id)
            if data is not None:
                return data
        return None
