"""The audit bundle: one file holding a whole log for offline audit (docs/formats/audit-bundle.md).

A ZIP archive (so any unzip tool can look inside) written with the STORED method only, fixed
timestamps and a fixed member order, so the same log state always exports to the same bytes:

    lessee-audit-bundle.json     manifest: format, version, origin, tree size, log vkey
    entries.bin                  every entry, in log order: u64 index || 32-byte leaf hash ||
                                 u32 length || canonical entry bytes (all big-endian)
    checkpoints/NNNNNNNNNNNNNNNNNNNN.note   every signed checkpoint, sorted by tree size
    blobs/<sha256 hex>           evidence, collateral and policy documents, content-addressed

The reader is strict about the container (member names, no duplicates, no compression, no
encryption or patched data, sizes bounded, framing exact) and raises ``BundleError`` (an
``InputError``: exit 2) when it cannot be read, whatever ``zipfile`` raised underneath. It does
*not* judge the contents: an index out of place, a leaf hash that does not match its entry, a
blob whose bytes do not match its name are all left for the auditor (``agent.audit.verify``) to
report as findings that name the entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from attest.errors import InputError, ParseError
from attest.jsonutil import load_json
from attest.log.entry import MAX_BLOB_SIZE, MAX_ENTRY_BYTES
from attest.log.note import MAX_NOTE_BYTES

BUNDLE_FORMAT = "lessee-audit-bundle"
BUNDLE_VERSION = 1
MANIFEST_NAME = "lessee-audit-bundle.json"
ENTRIES_NAME = "entries.bin"
#: Every member's timestamp (the earliest ZIP can express): exports are reproducible.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
RECORD_HEADER = struct.Struct(">Q32sI")
#: Largest manifest accepted (it is a handful of short fields).
MAX_MANIFEST_BYTES = 64 * 1024
#: Most members (entries.bin holds all entries, so members are checkpoints and blobs).
MAX_MEMBERS = 1_000_000
#: Most bytes of central directory per member: a record is 46 bytes, a name, an extra field
#: and a comment; every bundle member's name is under 100 characters and the writer adds no
#: comment (a ZIP64 extra field is 28 bytes at most).
MAX_DIRECTORY_BYTES_PER_MEMBER = 256
#: Largest entries.bin: bounds what the auditor holds in memory at once.
MAX_ENTRIES_FILE_BYTES = 4 * 1024 * 1024 * 1024

#: A ZIP local file header (APPNOTE 4.3.7): signature, versions, flags, method, time, date,
#: CRC-32, sizes, name and extra-field lengths; what ``zipfile`` checks before a member's data.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_HEADER_MAGIC = b"PK\x03\x04"
#: Local-header fields used below (indices into ``_LOCAL_HEADER``'s tuple).
_LH_FLAGS, _LH_NAME_LENGTH, _LH_EXTRA_LENGTH = 3, 10, 11
#: General-purpose flag bits ``zipfile`` handles specially (encryption, compressed patched
#: data, strong encryption): a member with any of them takes ``zipfile``'s own path.
_SPECIAL_FLAGS = 0x1 | 0x20 | 0x40
#: Flag bit 11: the member name is UTF-8 (otherwise CP437, as ``zipfile`` reads it).
_UTF8_NAME_FLAG = 0x800
#: What ``zipfile`` raises on a damaged or unsupported archive, all reported as ``BundleError``:
#: besides ``BadZipFile`` and I/O errors, ``NotImplementedError`` for a "version needed to
#: extract" above 6.3 (raised when the directory is read) and for flag bits 5 and 6 (raised by
#: ``open``), and ``ValueError`` (``UnicodeDecodeError``) for a name flagged UTF-8 that is not.
#: A bundle file is untrusted input, so none of these may escape as an internal error.
_ZIP_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    OSError,
    EOFError,
    NotImplementedError,
    ValueError,
)
#: Positional reads (POSIX); elsewhere every member takes ``zipfile``'s path.
_pread = getattr(os, "pread", None)

_CHECKPOINT_RE = re.compile(r"^checkpoints/(\d{20})\.note$")
_BLOB_RE = re.compile(r"^blobs/([0-9a-f]{64})$")


class BundleError(ParseError):
    """The bundle file cannot be read as an audit bundle."""


@dataclass(frozen=True)
class EntryRecord:
    """One framed entry as found in ``entries.bin``: ``position`` is its place in the file."""

    position: int
    index: int
    leaf_hash: bytes
    data: bytes


def encode_record(index: int, leaf_hash: bytes, data: bytes) -> bytes:
    return RECORD_HEADER.pack(index, leaf_hash, len(data)) + data


def parse_entries(data: bytes) -> tuple[EntryRecord, ...]:
    """Split ``entries.bin`` into records; exact framing, bounded lengths, no trailing bytes."""
    out: list[EntryRecord] = []
    off = 0
    while off < len(data):
        if len(data) - off < RECORD_HEADER.size:
            raise BundleError("truncated entry record header", offset=off, field=ENTRIES_NAME)
        index, leaf, length = RECORD_HEADER.unpack_from(data, off)
        if length > MAX_ENTRY_BYTES:
            raise BundleError(
                f"entry record longer than {MAX_ENTRY_BYTES}", offset=off, field=ENTRIES_NAME
            )
        start = off + RECORD_HEADER.size
        if len(data) - start < length:
            raise BundleError("truncated entry record", offset=off, field=ENTRIES_NAME)
        out.append(EntryRecord(len(out), index, leaf, data[start : start + length]))
        off = start + length
    return tuple(out)


def _zipinfo(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


class BundleWriter:
    """Writes a bundle member by member (entries streamed, so large logs need little memory)."""

    def __init__(self, path: str | Path | IO[bytes]) -> None:
        """``path``: a file name, or a binary file opened for writing (which stays open)."""
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._entries: IO[bytes] | None = None

    def write_manifest(self, *, origin: str, tree_size: int, log_vkey: str) -> None:
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "origin": origin,
            "tree_size": tree_size,
            "log_vkey": log_vkey,
        }
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        self._zip.writestr(_zipinfo(MANIFEST_NAME), body)

    def write_entries(self, records: Iterable[tuple[int, bytes, bytes]]) -> None:
        with self._zip.open(_zipinfo(ENTRIES_NAME), "w", force_zip64=True) as out:
            for index, leaf, data in records:
                out.write(encode_record(index, leaf, data))

    def write_checkpoint(self, seq: int, note: bytes) -> None:
        self._zip.writestr(_zipinfo(f"checkpoints/{seq:020d}.note"), note)

    def write_blob(self, sha256: bytes, data: bytes) -> None:
        self._zip.writestr(_zipinfo(f"blobs/{sha256.hex()}"), data)

    def close(self) -> None:
        self._zip.close()


@dataclass(frozen=True)
class Manifest:
    origin: str
    tree_size: int
    log_vkey: str


def _open_regular(path: str | Path) -> IO[bytes]:
    """``path`` opened for reading, if it is a regular file. ``zipfile`` given ``/dev/zero``
    reads (and allocates) without end, and opening a FIFO blocks until a writer appears. The open is non-blocking, so a FIFO is
    opened at once and refused here like any other non-regular file (no stat-then-open race)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BundleError(f"{path}: not a readable ZIP audit bundle ({exc})") from exc
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise BundleError(f"{path}: not a readable ZIP audit bundle ({exc})") from exc
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BundleError(f"{path}: not a regular file, so not an audit bundle")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)  # a regular file reads the same either way; be plain
    return os.fdopen(fd, "rb")


def _check_directory_size(f: IO[bytes]) -> None:
    """Refuse a bundle whose central directory declares more than ``MAX_MEMBERS`` members, or
    is larger than they can need (or than the file), before ``zipfile`` reads it: ``zipfile``
    builds an object per directory record (about nine times the directory's size in memory)
    and only then could the member count be checked.

    The end records are read by ``zipfile``'s own reader (``_EndRecData``, which the archive's
    parse then uses): a reader of our own once disagreed with it -- a classic record declaring
    one small member in front of a ZIP64 record ``zipfile`` used all the same, or a locator
    pointing at a decoy ZIP64 record where ``zipfile`` reads the one just before it -- and the
    check passed a directory of a million records. Where the end records cannot be read,
    nothing is decided here and ``zipfile`` reports the damage."""
    end_records = getattr(zipfile, "_EndRecData", None)
    if end_records is None:  # pragma: no cover (every CPython since 2.x has it)
        return
    try:
        size = f.seek(0, os.SEEK_END)
        record = end_records(f)
    except (OSError, zipfile.BadZipFile):
        return
    if record is None:
        return
    count = record[zipfile._ECD_ENTRIES_TOTAL]  # type: ignore[attr-defined]
    directory_bytes = record[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if count > MAX_MEMBERS:
        raise BundleError(f"more than {MAX_MEMBERS} members")
    if directory_bytes > min(size, MAX_MEMBERS * MAX_DIRECTORY_BYTES_PER_MEMBER):
        raise BundleError(
            f"central directory of {directory_bytes} bytes: larger than the file or than "
            f"{MAX_MEMBERS} members can need"
        )


class Bundle:
    """An open bundle: manifest, entry records and checkpoints in memory; blobs read on demand."""

    def __init__(self, path: str | Path) -> None:
        # The archive is read through one file object that this bundle owns: ``zipfile`` reads
        # the directory from it, and member reads (``_stored_bytes``) use the same descriptor,
        # so both see the one file that was opened.
        self._file = _open_regular(path)
        try:
            _check_directory_size(self._file)
        except BaseException:
            self._file.close()
            raise
        try:
            self._zip = zipfile.ZipFile(self._file, "r")
        except _ZIP_ERRORS as exc:
            self._file.close()
            raise BundleError(f"{path}: not a readable ZIP audit bundle ({exc})") from exc
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        infos = self._zip.infolist()
        if len(infos) > MAX_MEMBERS:
            raise BundleError(f"more than {MAX_MEMBERS} members")
        names: set[str] = set()
        self._blobs: dict[bytes, zipfile.ZipInfo] = {}
        checkpoint_infos: list[tuple[str, zipfile.ZipInfo]] = []
        for info in infos:
            name = info.filename
            if name in names:
                raise BundleError(f"duplicate member {name!r}")
            names.add(name)
            if info.compress_type != zipfile.ZIP_STORED:
                raise BundleError(f"member {name!r} is compressed; bundles use STORED only")
            if info.flag_bits & _SPECIAL_FLAGS:
                # Encrypted, "compressed patched data" or strongly encrypted: a bundle is
                # written with none of them, and ``zipfile`` cannot read such a member.
                special = info.flag_bits & _SPECIAL_FLAGS
                raise BundleError(
                    f"member {name!r} has flag bits {special:#x} (encryption or patched data)"
                )
            if name in (MANIFEST_NAME, ENTRIES_NAME):
                continue
            if m := _CHECKPOINT_RE.match(name):
                if info.file_size > MAX_NOTE_BYTES:
                    raise BundleError(f"checkpoint {name!r} larger than {MAX_NOTE_BYTES}")
                checkpoint_infos.append((name, info))
            elif m := _BLOB_RE.match(name):
                if info.file_size > MAX_BLOB_SIZE:
                    raise BundleError(f"blob {name!r} larger than {MAX_BLOB_SIZE}")
                self._blobs[bytes.fromhex(m.group(1))] = info
            else:
                raise BundleError(f"unexpected member {name!r}")
        for required in (MANIFEST_NAME, ENTRIES_NAME):
            if required not in names:
                raise BundleError(f"missing member {required!r}")
        self._check_disjoint(infos)
        self.manifest = self._parse_manifest(self._read(MANIFEST_NAME, MAX_MANIFEST_BYTES))
        self.records = parse_entries(self._read(ENTRIES_NAME, MAX_ENTRIES_FILE_BYTES))
        checkpoint_infos.sort()
        self.checkpoints: tuple[tuple[str, bytes], ...] = tuple(
            (name, self._read(name, MAX_NOTE_BYTES)) for name, _ in checkpoint_infos
        )

    def _check_disjoint(self, infos: list[zipfile.ZipInfo]) -> None:
        """Refuse members whose bytes overlap, or run into the central directory.

        Each member's size is checked against its own limit, but ZIP does not forbid two
        directory records pointing at the same bytes: a ~1 MB file of overlapping 256 KiB
        checkpoint members made the auditor hold gigabytes before any signature was checked.
        Each member takes at least its local header, its name and its data, laid end to end
        in offset order before the central directory (every bundle's writer lays them out
        so), so the members' data together is never more than the file itself."""
        end_of_members = getattr(self._zip, "start_dir", None)
        previous_end, previous_name = 0, ""
        for info in sorted(infos, key=lambda i: i.header_offset):
            if info.header_offset < previous_end:
                raise BundleError(
                    f"member {info.filename!r} overlaps member {previous_name!r} "
                    "(members must not share bytes)"
                )
            name_len = len(info.filename.encode("utf-8"))
            previous_end = info.header_offset + _LOCAL_HEADER.size + name_len + info.compress_size
            previous_name = info.filename
        if isinstance(end_of_members, int) and previous_end > end_of_members:
            raise BundleError(
                f"member {previous_name!r} runs into the central directory "
                "(members must lie before it)"
            )

    def _read(self, name: str, limit: int) -> bytes:
        return self._read_info(self._zip.getinfo(name), limit)

    def _read_info(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        name = info.filename
        if info.file_size > limit:
            raise BundleError(f"member {name!r} larger than {limit} bytes")
        data = self._stored_bytes(info)
        if data is not None:
            return data
        try:
            with self._zip.open(info) as f:
                data = f.read(limit + 1)
        except _ZIP_ERRORS as exc:
            raise BundleError(f"member {name!r} cannot be read ({exc})") from exc
        if len(data) > limit:
            raise BundleError(f"member {name!r} larger than {limit} bytes")
        return data

    def _stored_bytes(self, info: zipfile.ZipInfo) -> bytes | None:
        """A STORED member's bytes by two positional reads, or None: then ``zipfile`` reads it.

        The same checks as ``zipfile.ZipFile.open`` plus reading to the end: the local header's
        signature, its name equal to the directory's (decoded as ``zipfile`` decodes it), no
        special flag bits, the data exactly the directory's size, and its CRC-32 equal to the
        directory's. Any of them failing -- or anything unusual, such as a compressed size that
        differs from the size -- answers None, and ``zipfile``'s own path then reads the member
        and raises its own error, so a damaged bundle is reported exactly as before. Worth it
        because the replay reads one member per entry and the checkpoints are one per entry:
        ``zipfile.open`` costs ~15-20 us a member in Python before the data is read.
        """
        if (
            _pread is None
            or info.flag_bits & _SPECIAL_FLAGS
            or info.compress_type != zipfile.ZIP_STORED
            or info.compress_size != info.file_size
        ):
            return None
        name = info.orig_filename
        try:
            fd = self._file.fileno()
            head = _pread(fd, _LOCAL_HEADER.size + len(name.encode("utf-8")), info.header_offset)
            if len(head) < _LOCAL_HEADER.size:
                return None
            fields = _LOCAL_HEADER.unpack_from(head)
            if fields[0] != _LOCAL_HEADER_MAGIC or fields[_LH_FLAGS] & _SPECIAL_FLAGS:
                return None
            raw_name = head[_LOCAL_HEADER.size : _LOCAL_HEADER.size + fields[_LH_NAME_LENGTH]]
            if len(raw_name) != fields[_LH_NAME_LENGTH]:
                return None
            encoding = "utf-8" if fields[_LH_FLAGS] & _UTF8_NAME_FLAG else "cp437"
            if raw_name.decode(encoding) != name:
                return None
            start = (
                info.header_offset
                + _LOCAL_HEADER.size
                + fields[_LH_NAME_LENGTH]
                + fields[_LH_EXTRA_LENGTH]
            )
            data = _pread(fd, info.file_size, start) if info.file_size else b""
        except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
            return None
        if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
            return None
        return data

    @staticmethod
    def _parse_manifest(data: bytes) -> Manifest:
        try:  # the strict reader: bounded nesting (RecursionError escaped), no duplicate keys
            obj: Any = load_json(data, what="manifest")
        except InputError as exc:
            raise BundleError(
                f"manifest is not acceptable JSON: {exc}", field=MANIFEST_NAME
            ) from None
        keys = {"format", "version", "origin", "tree_size", "log_vkey"}
        if not isinstance(obj, dict) or set(obj) != keys:
            raise BundleError(f"manifest must have exactly {sorted(keys)}", field=MANIFEST_NAME)
        if obj["format"] != BUNDLE_FORMAT or obj["version"] != BUNDLE_VERSION:
            raise BundleError(
                f"not a {BUNDLE_FORMAT} version {BUNDLE_VERSION} bundle", field=MANIFEST_NAME
            )
        if not isinstance(obj["origin"], str) or not isinstance(obj["log_vkey"], str):
            raise BundleError("manifest origin and log_vkey must be strings", field=MANIFEST_NAME)
        if type(obj["tree_size"]) is not int or obj["tree_size"] < 0:
            raise BundleError("manifest tree_size must be a natural number", field=MANIFEST_NAME)
        return Manifest(obj["origin"], obj["tree_size"], obj["log_vkey"])

    def blob_digests(self) -> frozenset[bytes]:
        """The digests the blob members are *named* by (their bytes are checked on read)."""
        return frozenset(self._blobs)

    def blob_sha256(self, name_digest: bytes) -> tuple[bytes, int]:
        """SHA-256 and size of the bytes stored under ``blobs/<name_digest>``, streamed."""
        info = self._blobs[name_digest]
        h = hashlib.sha256()
        size = 0
        try:
            with self._zip.open(info) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                    size += len(chunk)
        except _ZIP_ERRORS as exc:
            raise BundleError(f"blob {name_digest.hex()} cannot be read ({exc})") from exc
        return h.digest(), size

    def blob_stored_size(self, name_digest: bytes) -> int:
        """The size the archive records for ``blobs/<name_digest>`` (reads are bounded by it)."""
        return self._blobs[name_digest].file_size

    def read_blob(self, name_digest: bytes) -> bytes:
        """The bytes stored under ``blobs/<name_digest>`` (the caller checks them)."""
        return self._read_info(self._blobs[name_digest], MAX_BLOB_SIZE)

    def close(self) -> None:
        try:
            self._zip.close()
        finally:
            self._file.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
