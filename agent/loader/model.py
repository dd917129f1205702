"""Sealed model directories: seal one, open one as a state dict, inspect one without the key.

A sealed directory holds ``<name>.sealed`` for every file of the model directory (safetensors
shards, the index json, config and tokenizer files) and ``lessee-manifest.lsm``. Opening checks
the manifest first (pinned digest, tag, model id and version), then every file against its
manifest entry, and refuses any ``*.sealed`` file the manifest does not list.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.loader._files import (
    MANIFEST_NAME,
    SEALED_SUFFIX,
    FileSink,
    OpenFile,
    create_private,
    default_threads,
)
from agent.loader._open import Progress, SealedSafeOpen, open_sealed_path
from attest.errors import InputError
from sealing.errors import BindingError, SealedFormatError
from sealing.weights import (
    DEFAULT_CHUNK_SIZE,
    MAX_ENTRIES,
    MAX_MANIFEST_BYTES,
    MAX_SMALL_FILE_BYTES,
    FileKind,
    Manifest,
    ManifestEntry,
    Rng,
    SafetensorsLayout,
    SealedFile,
    ShardHeader,
    encode_manifest,
    entry_for,
    key_fingerprint,
    open_manifest,
    open_small_file,
    parse_index,
    parse_manifest,
    read_files_into,
    read_shard_header,
    seal_file,
)
from sealing.weights._keys import Buffer, check_dek, wipe

INDEX_SUFFIX = ".safetensors.index.json"
#: Plaintext written per step by the debugging ``unseal`` (bounds its memory).
UNSEAL_STEP_BYTES = 64 << 20
#: Mode of every file ``seal_model`` writes: ciphertext, meant to be copied to the host.
SEALED_FILE_MODE = 0o644


def kind_of(name: str) -> FileKind:
    if name.endswith(INDEX_SUFFIX):
        return FileKind.INDEX
    if name.endswith(".safetensors"):
        return FileKind.SAFETENSORS
    return FileKind.OTHER


@dataclass(frozen=True)
class SealResult:
    """What ``seal_model`` wrote: the manifest (its digest goes into the key-release policy)
    and what it left out (hidden files, subdirectories, anything not a regular file)."""

    manifest: Manifest
    out_dir: Path
    skipped: tuple[str, ...] = field(default=())

    @property
    def manifest_digest(self) -> str:
        return self.manifest.digest


def _model_files(model_dir: Path) -> tuple[list[tuple[str, int]], list[str]]:
    files: list[tuple[str, int]] = []
    skipped: list[str] = []
    for entry in sorted(os.scandir(model_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            skipped.append(entry.name)
            continue
        st = entry.stat()  # follows symlinks: the Hugging Face cache links files to blobs
        if not stat.S_ISREG(st.st_mode):
            skipped.append(entry.name + ("/" if stat.S_ISDIR(st.st_mode) else ""))
            continue
        files.append((entry.name, st.st_size))
    if not files:
        raise InputError(f"{model_dir}: no files to seal")
    if len(files) > MAX_ENTRIES:
        raise InputError(f"{model_dir}: more than {MAX_ENTRIES} files")
    return files, skipped


def seal_model(
    model_dir: str | Path,
    out_dir: str | Path,
    dek: Buffer,
    *,
    model_id: str,
    model_version: int,
    rng: Rng,
    key_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    threads: int | None = None,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
) -> SealResult:
    """Seal every top-level file of ``model_dir`` into the new or empty ``out_dir``.

    The DEK is an argument (it goes to the key broker, never next to the output); ``rng``
    provides the per-file and manifest salts. Files are written under temporary names and
    renamed when complete; the manifest is written last, so a crash leaves no directory that
    opens. Plaintext is only read, never written.
    """
    check_dek(dek)
    src_dir, dst = Path(model_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise InputError(f"{src_dir}: not a directory")
    files, skipped = _model_files(src_dir)
    dst.mkdir(parents=True, exist_ok=True)
    if any(dst.iterdir()):
        raise InputError(f"{dst}: output directory is not empty")
    kid = key_id or key_fingerprint(dek)
    _check_index(src_dir, files)
    if on_total is not None:
        on_total(sum(size for _, size in files))
    n = threads or default_threads()
    headers: list[ShardHeader] = []
    with ThreadPoolExecutor(n, thread_name_prefix="lessee-seal") as pool:
        for name, _ in files:
            headers.append(
                _seal_one(
                    src_dir / name,
                    dst,
                    name,
                    dek,
                    model_id=model_id,
                    model_version=model_version,
                    key_id=kid,
                    rng=rng,
                    chunk_size=chunk_size,
                    executor=pool if n > 1 else None,
                    progress=progress,
                )
            )
    manifest = encode_manifest(
        [entry_for(h) for h in headers],
        dek,
        model_id=model_id,
        model_version=model_version,
        key_id=kid,
        salt=rng(32),
    )
    _write_new(dst / MANIFEST_NAME, manifest)
    return SealResult(manifest=parse_manifest(manifest), out_dir=dst, skipped=tuple(skipped))


def _check_index(src_dir: Path, files: list[tuple[str, int]]) -> None:
    """Every shard the index names must be among the files being sealed."""
    names = {name for name, _ in files}
    for name, size in files:
        if kind_of(name) is FileKind.INDEX:
            if size > MAX_SMALL_FILE_BYTES:
                raise InputError(f"{name}: index file too large")
            missing = set(parse_index((src_dir / name).read_bytes()).values()) - names
            if missing:
                raise InputError(f"{name} names shard(s) not in the directory: {sorted(missing)}")


def _make_readable(fd: int) -> None:
    """Give a sealed output its final mode through its open descriptor.

    Sealed files are ciphertext, meant to be copied to the host, so they are world-readable.
    The mode is set on the descriptor, before the file gets its final name: a ``chmod`` by path
    after the rename would follow whatever is at that path by then, and anyone who can write
    in OUT_DIR could plant a symlink there and have another file's mode changed.
    """
    os.fchmod(fd, SEALED_FILE_MODE)


def _seal_one(src: Path, dst_dir: Path, name: str, dek: Buffer, **kwargs: Any) -> ShardHeader:
    tmp = dst_dir / f".{name}{SEALED_SUFFIX}.partial"
    with OpenFile(src) as f:
        out = create_private(tmp)
        try:
            try:
                # No fsync per shard: the manifest is written (and synced) last, and a shard
                # lost in a crash fails authentication instead of loading wrong.
                header = seal_file(
                    f.source, f.size, FileSink(out), dek, kind=kind_of(name), name=name, **kwargs
                )
                _make_readable(out)
            finally:
                os.close(out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, dst_dir / f"{name}{SEALED_SUFFIX}")
    return header


def _write_new(path: Path, data: bytes) -> None:
    fd = create_private(path)
    try:
        FileSink(fd).write_at(0, memoryview(data))
        _make_readable(fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest_bytes(sealed_dir: Path) -> bytes:
    path = sealed_dir / MANIFEST_NAME
    with OpenFile(path) as f:
        if f.size > MAX_MANIFEST_BYTES:
            raise SealedFormatError(f"{path.name}: larger than {MAX_MANIFEST_BYTES} bytes")
        buf = bytearray(f.size)
        f.source.read_exact_at(0, memoryview(buf))
        return bytes(buf)


def _unlisted(sealed_dir: Path, manifest: Manifest) -> list[str]:
    listed = {e.name + SEALED_SUFFIX for e in manifest.entries}
    return sorted(
        p.name
        for p in sealed_dir.iterdir()
        if p.name.endswith(SEALED_SUFFIX) and p.name not in listed and not p.name.startswith(".")
    )


def check_out_dir(path: Path) -> None:
    """Refuse an ``unseal`` output that exists and is not an empty directory (``InputError``).

    Unsealing into a fresh directory means nothing is overwritten, no plaintext is mixed with
    unrelated files, and a failure can remove exactly what was written.
    """
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise InputError(f"{path}: exists and is not a directory (unseal needs a new or empty one)")
    if any(path.iterdir()):
        raise InputError(
            f"{path}: directory is not empty (unseal writes only into a new or empty directory)"
        )


def prepare_out_dir(path: Path) -> bool:
    """Create ``path`` or accept it if it is an empty directory; True if this call created it."""
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        check_out_dir(path)
        return False
    return True


def _remove_quietly(paths: list[Path], *, created_dir: Path | None) -> None:
    """Best-effort removal after a failed ``unseal_to``: the original error is what matters,
    so a file that cannot be removed is left (the CLI reports what is left) rather than masking
    it."""
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)
    if created_dir is not None:
        with contextlib.suppress(OSError):
            created_dir.rmdir()  # only if empty: never removes what someone else put there


def _unseal_file(
    sealed: SealedFile, sink: FileSink, buf: bytearray, progress: Progress | None
) -> None:
    """One file's plaintext, step by step through ``buf`` (each step authenticated first)."""
    step = max(1, len(buf))
    for start in range(0, sealed.length, step):
        view = memoryview(buf)[: min(step, sealed.length - start)]
        sealed.read_into(start, view, progress=progress)
        sink.write_at(start, view)


class SealedModel:
    """An opened sealed model directory: manifest verified, every file's header verified.

    All files are opened (and their headers and final chunks authenticated) up front, so the
    data key is needed only in ``__init__``: afterwards only per-file AES contexts remain, and
    the caller can wipe its key buffer. Close it (or use ``with``) to release descriptors.
    """

    def __init__(
        self,
        sealed_dir: str | Path,
        key: Buffer,
        *,
        model_id: str,
        model_version: int,
        manifest_digest: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.path = Path(sealed_dir)
        self.manifest = open_manifest(
            read_manifest_bytes(self.path),
            key,
            model_id=model_id,
            model_version=model_version,
            manifest_digest=manifest_digest,
        )
        extra = _unlisted(self.path, self.manifest)
        if extra:
            raise BindingError(
                f"sealed files not in the manifest: {', '.join(extra)}", reason="manifest_mismatch"
            )
        n = threads or default_threads()
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="lessee-unseal") if n > 1 else None
        self._files: dict[str, tuple[OpenFile, SealedFile]] = {}
        self._layouts: dict[str, SafetensorsLayout] = {}
        try:
            for e in self.manifest.entries:
                path = self.path / (e.name + SEALED_SUFFIX)
                if not path.is_file():
                    raise BindingError(
                        f"{path.name} is listed in the manifest but missing",
                        reason="manifest_mismatch",
                    )
                self._files[e.name] = open_sealed_path(
                    path,
                    key,
                    model_id=model_id,
                    model_version=model_version,
                    entry=e,
                    executor=self._pool,
                )
        except BaseException:
            self.close()
            raise

    @property
    def files(self) -> list[str]:
        return [e.name for e in self.manifest.entries]

    @property
    def shards(self) -> list[str]:
        return [e.name for e in self.manifest.entries if e.kind is FileKind.SAFETENSORS]

    def entry(self, name: str) -> ManifestEntry:
        return self.manifest.entry(name)

    def _sealed(self, name: str) -> SealedFile:
        self.manifest.entry(name)
        return self._files[name][1]

    def read_file(self, name: str) -> bytes:
        """A small file in full (``config.json``, the index, tokenizer files)."""
        return open_small_file(self._sealed(name))

    def safe_open(
        self, shard: str, framework: str = "np", device: str | None = None
    ) -> SealedSafeOpen:
        """Lazy access to one shard (``safetensors.safe_open`` counterpart)."""
        sealed = self._sealed(shard)
        if sealed.header.kind is not FileKind.SAFETENSORS:
            raise SealedFormatError(f"{shard} is not a safetensors shard", field="kind")
        opened = SealedSafeOpen(
            sealed, framework_name=framework, device=device, layout=self._layouts.get(shard)
        )
        self._layouts[shard] = opened.layout
        return opened

    def weight_map(self) -> dict[str, str]:
        """Tensor name -> shard, checked against the shards' own (encrypted) headers: every
        tensor in exactly one shard, and the index (if sealed along) agreeing with them."""
        found: dict[str, str] = {}
        for shard in self.shards:
            for name in self.safe_open(shard).layout.tensors:
                if name in found:
                    raise SealedFormatError(
                        f"tensor {name!r} is in both {found[name]} and {shard}", field="tensors"
                    )
                found[name] = shard
        for e in self.manifest.entries:
            if e.kind is FileKind.INDEX:
                declared = parse_index(self.read_file(e.name))
                if declared != found:
                    raise SealedFormatError(
                        f"{e.name} does not match the shards' tensors", field="weight_map"
                    )
        return found

    def load_state_dict(
        self,
        framework: str = "np",
        *,
        device: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Every tensor of the model as one dict (numpy arrays, or torch tensors on ``device``)."""
        self.weight_map()
        out: dict[str, Any] = {}
        if device is not None:  # tensor by tensor, each moved as soon as it authenticated
            for shard in self.shards:
                with self.safe_open(shard, framework, device) as f:
                    out.update(f.load_all(progress=progress))
            return out
        # Host memory: every shard's buffer first, then one parallel pass over all shards (no
        # thread waits at a shard's end), then the tensors as views. Nothing is handed out
        # before every chunk of every shard authenticated; on failure every buffer is wiped.
        opened = [self.safe_open(shard, framework) for shard in self.shards]
        bufs = [f.alloc_all() for f in opened]
        read_files_into(
            [(f.sealed, view) for f, (_, view) in zip(opened, bufs, strict=True)],
            executor=self._pool,
            progress=progress,
        )
        for f, (base, _) in zip(opened, bufs, strict=True):
            out.update(f.tensors_of(base))
        return out

    @property
    def total_plaintext(self) -> int:
        return sum(e.plaintext_length for e in self.manifest.entries)

    def unseal_to(self, out_dir: str | Path, *, progress: Progress | None = None) -> list[Path]:
        """Write every file's plaintext into ``out_dir`` (debugging only: plaintext on disk).

        ``out_dir`` must be new or an empty directory (``InputError`` otherwise), so nothing is
        overwritten and no unsealed file is mixed with others. All files are first written
        under temporary names (``.<name>.partial``, mode 0600) and renamed only once every
        chunk of every file authenticated. On any failure every file this call wrote is
        removed (and ``out_dir`` too if this call created it) before the error is re-raised:
        a model that fails authentication leaves no plaintext of its other files behind. Only
        a process killed mid-way (no chance to clean up) can leave files. The step buffer the
        plaintext passes through is wiped when done.
        """
        dst = Path(out_dir)
        created = prepare_out_dir(dst)
        largest = max((self._sealed(name).length for name in self.files), default=0)
        buf = bytearray(min(UNSEAL_STEP_BYTES, largest))
        pending: list[tuple[Path, Path]] = []  # (temporary, final) names, created by this call
        written: list[Path] = []  # renamed into place by this call
        try:
            for name in self.files:
                tmp = dst / f".{name}.partial"
                fd = create_private(tmp)  # O_EXCL: never someone else's file
                pending.append((tmp, dst / name))
                try:
                    _unseal_file(self._sealed(name), FileSink(fd), buf, progress)
                finally:
                    os.close(fd)
            while pending:  # every file authenticated: only now do plaintext names appear
                tmp, final = pending[0]
                os.replace(tmp, final)
                pending.pop(0)
                written.append(final)
        except BaseException:
            _remove_quietly(
                [tmp for tmp, _ in pending] + written, created_dir=dst if created else None
            )
            raise
        finally:
            wipe(buf)
        return written

    def close(self) -> None:
        for f, _ in self._files.values():
            f.close()
        self._files = {}
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> SealedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_model(
    sealed_dir: str | Path,
    key: Buffer,
    framework: str = "np",
    *,
    model_id: str,
    model_version: int,
    manifest_digest: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """A whole sealed model directory as one state dict (index json + shards)."""
    with SealedModel(
        sealed_dir,
        key,
        model_id=model_id,
        model_version=model_version,
        manifest_digest=manifest_digest,
        threads=threads,
    ) as model:
        return model.load_state_dict(framework, device=device, progress=progress)


@dataclass(frozen=True)
class InspectedFile:
    entry: ManifestEntry
    header: ShardHeader | None
    problems: tuple[str, ...]


@dataclass(frozen=True)
class Inspection:
    """What anyone can see without the key. Nothing here is authenticated: the manifest's
    claims are what the files *say*; only opening with the key proves them."""

    manifest: Manifest
    files: tuple[InspectedFile, ...]
    unlisted: tuple[str, ...]

    @property
    def problems(self) -> list[str]:
        out = [f"{p}: not listed in the manifest" for p in self.unlisted]
        for f in self.files:
            out.extend(f"{f.entry.name}: {p}" for p in f.problems)
        return out


def inspect_sealed_dir(sealed_dir: str | Path) -> Inspection:
    """Parse the manifest and every header; report structural mismatches (no key needed)."""
    path = Path(sealed_dir)
    manifest = parse_manifest(read_manifest_bytes(path))
    files = []
    for e in manifest.entries:
        problems: list[str] = []
        header = None
        p = path / (e.name + SEALED_SUFFIX)
        try:
            with OpenFile(p) as f:
                header = read_shard_header(f.source, f.size)
        except FileNotFoundError:
            problems.append("file missing")
        except SealedFormatError as exc:
            problems.append(str(exc))
        except OSError as exc:
            # A directory, a FIFO, a permission problem: one file's problem, not the report's.
            problems.append(f"cannot read: {exc.strerror or type(exc).__name__}")
        if header is not None:
            if header.digest != e.header_digest:
                problems.append("header digest differs from the manifest")
            for label, got, want in (
                ("name", header.name, e.name),
                ("kind", header.kind, e.kind),
                ("model id", header.model_id, manifest.model_id),
                ("model version", header.model_version, manifest.model_version),
                ("sealed length", header.sealed_length, e.sealed_length),
            ):
                if got != want:
                    problems.append(f"{label} {got!r} differs from the manifest's {want!r}")
        files.append(InspectedFile(entry=e, header=header, problems=tuple(problems)))
    return Inspection(
        manifest=manifest, files=tuple(files), unlisted=tuple(_unlisted(path, manifest))
    )
