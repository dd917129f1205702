"""Seal and open recipes: the only way in to the sealed-weights format.

Sealing takes the data key (DEK), the file's identity (model id, version, name, kind) and a
random source as arguments; it never generates a key or touches a path. Opening checks, in this
order: structure (``SealedFormatError``), the manifest binding if one is given (``BindingError``),
the header tag (``DecryptionError``), the claims against what the caller expects
(``BindingError``), then each chunk's tag as it is read (``DecryptionError``). Plaintext is
handed out only after every chunk it came from authenticated.

Byte access goes through two small interfaces (``PositionalSource``/``PositionalSink``); the
agent implements them with ``os.preadv``/``os.pwrite`` on file descriptors, tests and small
files use ``BytesSource``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from sealing.errors import BindingError, SealedFormatError
from sealing.weights._chunks import (
    ChunkCipher,
    PositionalSink,
    PositionalSource,
    Progress,
    check_range,
    decrypt_range,
    decrypt_ranges,
    encrypt_all,
    verify_chunks,
)
from sealing.weights._format import (
    DEFAULT_CHUNK_LOG2,
    MAX_CHUNK_LOG2,
    MIN_CHUNK_LOG2,
    FileKind,
    ShardHeader,
    encode_header_body,
    parse_shard_header,
    peek_header_length,
)
from sealing.weights._keys import Buffer, file_keys, wipe
from sealing.weights._manifest import ManifestEntry
from sealing.weights._safetensors import (
    SafetensorsLayout,
    header_size,
    parse_safetensors_header,
)

#: Random bytes of the requested length (``os.urandom`` in production, seeded in vectors).
Rng = Callable[[int], bytes]
DEFAULT_CHUNK_SIZE = 1 << DEFAULT_CHUNK_LOG2
#: An index json or config file sealed as a whole is read into memory; bound it (the index of a
#: 405B model with ~1,000 tensors is ~100 KB).
MAX_SMALL_FILE_BYTES = 64 << 20


class BytesSource:
    """A ``PositionalSource`` over bytes in memory (small files, tests)."""

    def __init__(self, data: Buffer) -> None:
        self._data = memoryview(data).cast("B")

    def __len__(self) -> int:
        return self._data.nbytes

    def read_exact_at(self, offset: int, buf: memoryview) -> None:
        end = offset + buf.nbytes
        if offset < 0 or end > self._data.nbytes:
            raise SealedFormatError("truncated", offset=min(offset, self._data.nbytes))
        buf[:] = self._data[offset:end]


class BytesSink:
    """A ``PositionalSink`` into a preallocated bytearray."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def write_at(self, offset: int, data: memoryview) -> None:
        self.data[offset : offset + data.nbytes] = data


def chunk_log2_of(chunk_size: int) -> int:
    log2 = chunk_size.bit_length() - 1
    if chunk_size <= 0 or chunk_size != 1 << log2 or not MIN_CHUNK_LOG2 <= log2 <= MAX_CHUNK_LOG2:
        raise SealedFormatError(
            f"chunk size must be a power of two from {1 << MIN_CHUNK_LOG2} to "
            f"{1 << MAX_CHUNK_LOG2}",
            field="chunk_size",
        )
    return log2


def validate_plaintext(kind: FileKind, source: PositionalSource, length: int) -> None:
    """Refuse to seal what the loader would refuse to open (checked before any encryption)."""
    if kind is FileKind.SAFETENSORS:
        prefix = bytearray(min(8, length))
        source.read_exact_at(0, memoryview(prefix))
        n = header_size(bytes(prefix), length)
        header = bytearray(n)
        source.read_exact_at(8, memoryview(header))
        parse_safetensors_header(bytes(header), length)
    elif kind is FileKind.INDEX:
        if length > MAX_SMALL_FILE_BYTES:
            raise SealedFormatError("index file too large", field="index")
        raw = bytearray(length)
        source.read_exact_at(0, memoryview(raw))
        parse_index(bytes(raw))


def parse_index(raw: bytes) -> dict[str, str]:
    """``model.safetensors.index.json``: its ``weight_map`` (tensor name -> shard file name)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SealedFormatError("index is not valid JSON", field="index") from exc
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in wm.items()
    ):
        raise SealedFormatError("index has no weight_map of text to text", field="weight_map")
    return wm


def seal_file(
    source: PositionalSource,
    plaintext_length: int,
    sink: PositionalSink,
    dek: Buffer,
    *,
    kind: FileKind,
    name: str,
    model_id: str,
    model_version: int,
    key_id: str,
    rng: Rng,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> ShardHeader:
    """Seal one file: header at offset 0, then the chunks. Returns the (authentic) header,
    whose ``digest`` and ``sealed_length`` go into the manifest entry."""
    validate_plaintext(kind, source, plaintext_length)
    salt = rng(32)
    body = encode_header_body(
        kind=kind,
        chunk_log2=chunk_log2_of(chunk_size),
        plaintext_length=plaintext_length,
        model_version=model_version,
        salt=salt,
        model_id=model_id,
        name=name,
        key_id=key_id,
    )
    keys = file_keys(dek, salt)
    header = parse_shard_header(body + keys.header_tag(body))
    sink.write_at(0, memoryview(header.raw))
    encrypt_all(ChunkCipher(keys, header), source, sink, executor=executor, progress=progress)
    return header


def seal_bytes(
    data: Buffer,
    dek: Buffer,
    *,
    kind: FileKind,
    name: str,
    model_id: str,
    model_version: int,
    key_id: str,
    rng: Rng,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """Seal a small in-memory file; the result is byte for byte what ``seal_file`` writes."""
    src = BytesSource(data)
    sink = _GrowingSink()
    seal_file(
        src,
        len(src),
        sink,
        dek,
        kind=kind,
        name=name,
        model_id=model_id,
        model_version=model_version,
        key_id=key_id,
        rng=rng,
        chunk_size=chunk_size,
    )
    return bytes(sink.data)


class _GrowingSink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write_at(self, offset: int, data: memoryview) -> None:
        end = offset + data.nbytes
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = data


def entry_for(header: ShardHeader) -> ManifestEntry:
    """The manifest entry that pins this sealed file."""
    return ManifestEntry(
        name=header.name,
        kind=header.kind,
        chunk_log2=header.chunk_log2,
        plaintext_length=header.plaintext_length,
        sealed_length=header.sealed_length,
        header_digest=header.digest,
    )


def read_shard_header(source: PositionalSource, file_length: int) -> ShardHeader:
    """Read and parse the header of a sealed file (structure only; no key, no trust)."""
    prefix = bytearray(min(16, file_length))
    source.read_exact_at(0, memoryview(prefix))
    length = peek_header_length(bytes(prefix))
    if length > file_length:
        raise SealedFormatError("file shorter than its header", offset=12, field="header_length")
    raw = bytearray(length)
    source.read_exact_at(0, memoryview(raw))
    header = parse_shard_header(bytes(raw))
    if file_length != header.sealed_length:
        raise SealedFormatError(
            f"sealed file is {file_length} bytes, its header implies {header.sealed_length} "
            "(truncated or appended to)",
            field="length",
        )
    return header


@dataclass(frozen=True)
class SealedFile:
    """An opened sealed file: header authenticated and bound; body decryptable by range.

    ``read_into`` authenticates every chunk a range overlaps before the caller can use the
    bytes (on failure the output buffer is wiped). Thread safe: reads are positional.
    """

    header: ShardHeader
    _cipher: ChunkCipher
    _source: PositionalSource
    _executor: Executor | None

    @property
    def length(self) -> int:
        return self.header.plaintext_length

    def read_into(self, start: int, out: memoryview, *, progress: Progress | None = None) -> None:
        """Decrypt plaintext ``[start, start + len(out))`` into ``out``; ``InputError`` if that
        range is not inside the plaintext."""
        out = out.cast("B") if out.format != "B" else out
        decrypt_range(
            self._cipher,
            self._source,
            start,
            start + out.nbytes,
            out,
            executor=self._executor,
            progress=progress,
        )

    def read(self, start: int, end: int) -> bytearray:
        """Decrypt plaintext ``[start, end)``. The range is checked before the buffer is made:
        ``end < start`` was a bare ``ValueError`` from ``bytearray``, and an ``end`` far past
        the file would have allocated that much first. ``InputError`` for both."""
        check_range(start, end, self.length)
        out = bytearray(end - start)
        self.read_into(start, memoryview(out))
        return out

    def read_all_into(self, out: memoryview, *, progress: Progress | None = None) -> None:
        """Decrypt the whole file (every chunk, the final one included: truncation shows)."""
        read_files_into([(self, out)], executor=self._executor, progress=progress)

    def verify_final_chunk(self) -> None:
        """Authenticate the last chunk (a lazy reader calls this once, on open)."""
        verify_chunks(self._cipher, self._source, range(self._cipher.count - 1, self._cipher.count))


def read_files_into(
    reads: Sequence[tuple[SealedFile, memoryview]],
    *,
    executor: Executor | None,
    progress: Progress | None = None,
) -> None:
    """``read_all_into`` for several files at once, as one set of tasks on ``executor``.

    A model is several shards; decrypting them one after the other makes every thread wait at
    each shard's end for the slowest one. On any failure every output buffer is wiped.
    """
    jobs = []
    for f, out in reads:
        view = out.cast("B") if out.format != "B" else out
        if view.nbytes != f.length:
            raise ValueError("output buffer must be exactly the plaintext length")
        if f.length == 0:  # no plaintext, but its one (final) chunk must still authenticate
            verify_chunks(f._cipher, f._source, range(1))
        jobs.append((f._cipher, f._source, 0, f.length, view))
    decrypt_ranges(jobs, executor=executor, progress=progress)


def open_sealed_file(
    source: PositionalSource,
    file_length: int,
    dek: Buffer,
    *,
    model_id: str,
    model_version: int,
    name: str | None = None,
    kind: FileKind | None = None,
    entry: ManifestEntry | None = None,
    executor: Executor | None = None,
) -> SealedFile:
    """Open a sealed file for reading. ``entry`` (from an opened manifest) pins the header.

    Pass ``name``/``kind`` to insist on them; with ``entry`` they come from the manifest.
    The final chunk is authenticated here, so a file cut short is refused even by a reader
    that later touches only one tensor.
    """
    if entry is not None:
        if file_length != entry.sealed_length:
            raise BindingError(
                f"{entry.name}: {file_length} bytes, manifest says {entry.sealed_length}",
                reason="shard_mismatch",
            )
        name, kind = entry.name, entry.kind
    header = read_shard_header(source, file_length)
    if entry is not None and header.digest != entry.header_digest:
        raise BindingError(
            f"{entry.name}: header is not the one the manifest pins", reason="shard_mismatch"
        )
    keys = file_keys(dek, header.salt)
    keys.verify_header(header.signed_part, header.tag)
    if header.model_id != model_id:
        raise BindingError(
            f"sealed for model {header.model_id!r}, expected {model_id!r}",
            reason="model_mismatch",
        )
    if header.model_version != model_version:
        raise BindingError(
            f"sealed as version {header.model_version}, expected {model_version}",
            reason="version_mismatch",
        )
    if name is not None and header.name != name:
        raise BindingError(f"sealed as {header.name!r}, expected {name!r}", reason="shard_mismatch")
    if kind is not None and header.kind != kind:
        raise BindingError(
            f"sealed as a {header.kind.name} file, expected {kind.name}", reason="shard_mismatch"
        )
    opened = SealedFile(header, ChunkCipher(keys, header), source, executor)
    opened.verify_final_chunk()
    return opened


def read_safetensors_layout(f: SealedFile) -> SafetensorsLayout:
    """Decrypt and strictly parse the (encrypted) safetensors header of a sealed shard."""
    if f.header.kind is not FileKind.SAFETENSORS:
        raise SealedFormatError(f"{f.header.name} is not a safetensors shard", field="kind")
    first = f.read(0, min(f.length, f.header.chunk_size))
    try:
        n = header_size(bytes(first[:8]), f.length)
        if 8 + n <= len(first):
            header = bytes(first[8 : 8 + n])
        else:
            header = bytes(first[8:]) + bytes(f.read(len(first), 8 + n))
    finally:
        wipe(first)
    return parse_safetensors_header(header, f.length)


def open_small_file(f: SealedFile) -> bytes:
    """Decrypt a whole small file (index, config) into memory."""
    if f.length > MAX_SMALL_FILE_BYTES:
        raise SealedFormatError(f"{f.header.name} is too large to read whole", field="length")
    out = bytearray(f.length)
    f.read_all_into(memoryview(out))
    return bytes(out)


def open_bytes(
    sealed: Buffer,
    dek: Buffer,
    *,
    model_id: str,
    model_version: int,
    name: str | None = None,
    kind: FileKind | None = None,
    entry: ManifestEntry | None = None,
) -> bytes:
    """Open a small sealed file held in memory; the inverse of ``seal_bytes``."""
    src = BytesSource(sealed)
    f = open_sealed_file(
        src,
        len(src),
        dek,
        model_id=model_id,
        model_version=model_version,
        name=name,
        kind=kind,
        entry=entry,
    )
    return open_small_file(f)
