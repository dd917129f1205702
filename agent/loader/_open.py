"""The framework-neutral core of the loading hook: one opened sealed safetensors shard.

``SealedSafeOpen`` mirrors ``safetensors.safe_open``: ``keys()``, ``metadata()``,
``get_tensor(name)``, ``get_slice(name)``. A tensor is decrypted by touching only the chunks its
byte range spans, straight into a freshly allocated buffer of the framework (numpy or torch),
which is handed out only after every one of those chunks authenticated. ``load_all()`` decrypts
the whole shard into one buffer, in parallel, and returns views into it (no second copy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.loader._files import SEALED_SUFFIX, OpenFile, default_threads
from attest.errors import InputError
from sealing.errors import SealedFormatError, UnsupportedDtypeError
from sealing.weights import (
    FileKind,
    ManifestEntry,
    SafetensorsLayout,
    SealedFile,
    TensorInfo,
    open_sealed_file,
    read_safetensors_layout,
)
from sealing.weights._keys import Buffer

Progress = Callable[[int], None]

#: safetensors dtype -> numpy dtype (little-endian, as the format stores them). The others
#: (BF16, the F8/F6/F4 floats) have no numpy dtype; numpy callers get UnsupportedDtypeError,
#: as safetensors.numpy itself refuses them.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
    "C64": np.dtype("<c8"),
}


class Framework(Protocol):
    """How one array library allocates a byte buffer and views it as a typed tensor."""

    name: str

    def alloc(self, nbytes: int) -> tuple[Any, memoryview]:
        """A new uninitialised byte buffer and a writable memoryview of it."""

    def tensor(self, base: Any, offset: int, info: TensorInfo) -> Any:
        """The tensor ``info`` as a view of ``base`` at ``offset`` (a copy if misaligned)."""

    def check_dtype(self, dtype: str) -> None:
        """Raise ``UnsupportedDtypeError`` early, before anything is decrypted."""

    def check_device(self, device: str | None) -> None:
        """Refuse a device the framework cannot place tensors on (before any work)."""

    def to_device(self, tensor: Any, device: str | None) -> Any: ...


class NumpyFramework:
    name = "numpy"

    def alloc(self, nbytes: int) -> tuple[Any, memoryview]:
        base = np.empty(nbytes, dtype=np.uint8)
        return base, base.data

    def check_dtype(self, dtype: str) -> None:
        if dtype not in NUMPY_DTYPES:
            raise UnsupportedDtypeError(
                f"numpy has no dtype for safetensors {dtype}; load with framework='pt'"
            )

    def tensor(self, base: Any, offset: int, info: TensorInfo) -> Any:
        self.check_dtype(info.dtype)
        dt = NUMPY_DTYPES[info.dtype]
        raw = base[offset : offset + info.nbytes]
        if offset % dt.alignment:
            raw = raw.copy()
        return raw.view(dt).reshape(info.shape)

    def check_device(self, device: str | None) -> None:
        if device not in (None, "cpu"):
            raise ValueError("numpy arrays live on the CPU; use framework='pt' for a device")

    def to_device(self, tensor: Any, device: str | None) -> Any:
        return tensor


def framework(name: str) -> Framework:
    """``np``/``numpy`` or ``pt``/``torch`` (the latter imports torch, an optional extra)."""
    if name in ("np", "numpy"):
        return NumpyFramework()
    if name in ("pt", "torch"):
        from agent.loader._torch import TorchFramework  # optional extra: imported on use

        return TorchFramework()
    raise ValueError(f"unknown framework {name!r} (use 'np' or 'pt')")


def expected_file_name(path: Path, expected_name: str | None) -> str:
    """The plaintext file name a single sealed file must have been sealed under.

    Every file of a model is sealed under one key, model id and version, so those alone do not
    tell shard 1 from shard 2: the name in the authenticated header does. It comes from
    ``expected_name`` or from the ``<name>.sealed`` file name; when both are there they must
    agree. A path without the suffix (a blob or cache path) and no ``expected_name`` would open
    any file of the model, so it is refused.
    """
    from_suffix = path.name[: -len(SEALED_SUFFIX)] if path.name.endswith(SEALED_SUFFIX) else None
    if expected_name is not None:
        if not expected_name:
            raise InputError("expected_name must not be empty")
        if from_suffix is not None and from_suffix != expected_name:
            raise InputError(
                f"{path.name}: expected_name {expected_name!r} contradicts the file name"
            )
        return expected_name
    if not from_suffix:
        raise InputError(
            f"{path.name}: cannot tell which file of the model this must be; pass expected_name"
            f" (the plaintext file name, e.g. 'model-00001-of-00002.safetensors') or use the"
            f" '<name>{SEALED_SUFFIX}' file name"
        )
    return from_suffix


def open_sealed_path(
    path: str | Path,
    dek: Buffer,
    *,
    model_id: str,
    model_version: int,
    entry: ManifestEntry | None = None,
    expected_name: str | None = None,
    executor: Executor | None = None,
) -> tuple[OpenFile, SealedFile]:
    """Open ``path`` and authenticate its header and final chunk.

    The file must have been sealed under the expected name: ``entry.name`` when a manifest
    entry pins it (``expected_name``, if given, must equal it), otherwise ``expected_name`` or
    the name before the ``.sealed`` suffix (see ``expected_file_name``). Checked before the
    file is opened, so a refused call touches nothing.
    """
    p = Path(path)
    if entry is not None:
        if expected_name is not None and expected_name != entry.name:
            raise InputError(f"expected_name {expected_name!r} is not the manifest entry's name")
        name = None  # the entry pins name and kind (and the header digest)
    else:
        name = expected_file_name(p, expected_name)
    f = OpenFile(p)
    try:
        sealed = open_sealed_file(
            f.source,
            f.size,
            dek,
            model_id=model_id,
            model_version=model_version,
            name=name,
            entry=entry,
            executor=executor,
        )
    except BaseException:
        f.close()
        raise
    return f, sealed


class SealedSlice:
    """``safe_open(...).get_slice(name)``: shape and dtype without decrypting; indexing
    decrypts only the rows (first dimension) the index selects, as tensor-parallel loaders do,
    and the result lands on the device the shard was opened for, as ``get_tensor``'s does.
    """

    def __init__(self, owner: SealedSafeOpen, info: TensorInfo) -> None:
        self._owner = owner
        self._info = info

    def get_shape(self) -> list[int]:
        return list(self._info.shape)

    def get_dtype(self) -> str:
        return self._info.dtype

    def __getitem__(self, key: Any) -> Any:
        info = self._info
        key = key if isinstance(key, tuple) else (key,)
        rows = info.shape[0] if info.shape else 0
        first = key[0] if key else slice(None)
        if (
            rows == 0
            or info.nbytes % rows  # packed sub-byte rows (F4, F6): no byte boundary per row
            or not isinstance(first, (int, slice))
            or isinstance(first, bool)
        ):
            return self._owner.get_tensor(info.name)[key]
        row_bytes = info.nbytes // rows
        if isinstance(first, int):
            idx = first + rows if first < 0 else first
            if not 0 <= idx < rows:
                raise IndexError(f"index {first} out of range for {rows} rows")
            lo, hi, rest0 = idx, idx + 1, 0
        else:
            start, stop, step = first.indices(rows)
            if step < 1 or stop <= start:
                return self._owner.get_tensor(info.name)[key]
            lo, hi = start, start + ((stop - start - 1) // step) * step + 1
            rest0 = slice(None, None, step)  # type: ignore[assignment]
        part = TensorInfo(
            name=info.name,
            dtype=info.dtype,
            shape=(hi - lo, *info.shape[1:]),
            start=info.start + lo * row_bytes,
            end=info.start + hi * row_bytes,
        )
        # Indexed on the host first, so only the selected part travels to the device.
        return self._owner._place(self._owner._read_tensor(part)[(rest0, *key[1:])])


class SealedSafeOpen:
    """One opened sealed safetensors shard (see the module docstring).

    Use as a context manager, or call ``close()``. Thread safe for concurrent ``get_tensor``.
    """

    def __init__(
        self,
        sealed: SealedFile,
        *,
        framework_name: str = "np",
        device: str | None = None,
        owned: OpenFile | None = None,
        owned_executor: ThreadPoolExecutor | None = None,
        layout: SafetensorsLayout | None = None,
    ) -> None:
        self._fw = framework(framework_name)
        self._fw.check_device(device)
        self._sealed = sealed
        self._device = device
        self._owned = owned
        self._owned_executor = owned_executor
        self.layout: SafetensorsLayout = layout or read_safetensors_layout(sealed)

    @property
    def name(self) -> str:
        return self._sealed.header.name

    @property
    def sealed(self) -> SealedFile:
        """The opened sealed file (header authenticated) this shard reads from."""
        return self._sealed

    def keys(self) -> list[str]:
        return sorted(self.layout.tensors)

    def metadata(self) -> dict[str, str] | None:
        return None if self.layout.metadata is None else dict(self.layout.metadata)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.layout.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in {self.name}") from None

    def get_slice(self, name: str) -> SealedSlice:
        return SealedSlice(self, self.info(name))

    def get_tensor(self, name: str) -> Any:
        return self._place(self._read_tensor(self.info(name)))

    def _place(self, tensor: Any) -> Any:
        """Onto the device this shard was opened for: every way out (``get_tensor``,
        ``get_slice(...)[...]``) goes through here, so none of them stays on the host."""
        return self._fw.to_device(tensor, self._device)

    def _read_tensor(self, info: TensorInfo) -> Any:
        self._fw.check_dtype(info.dtype)
        base, view = self._fw.alloc(info.nbytes)
        self._sealed.read_into(info.start, view)
        return self._fw.tensor(base, 0, info)

    def iter_tensors(self) -> Iterator[tuple[str, Any]]:
        """Tensor by tensor in file order: each is moved to ``device`` as soon as it is
        decrypted, so host memory holds one tensor at a time (the GPU path)."""
        for info in self.layout.tensors.values():
            yield info.name, self.get_tensor(info.name)

    def load_all(self, *, progress: Progress | None = None) -> dict[str, Any]:
        """Every tensor. Without a device: one parallel decryption of the whole shard into one
        buffer, tensors are views of it. With a device: tensor by tensor."""
        if self._device is not None:
            for info in self.layout.tensors.values():  # all checked before any is decrypted
                self._fw.check_dtype(info.dtype)
            out = {}
            for info in self.layout.tensors.values():
                out[info.name] = self.get_tensor(info.name)
                if progress is not None:
                    progress(info.nbytes)
            return out
        base, view = self.alloc_all()
        self._sealed.read_all_into(view, progress=progress)
        return self.tensors_of(base)

    def alloc_all(self) -> tuple[Any, memoryview]:
        """A buffer for the whole shard's plaintext (dtypes checked first, nothing decrypted).

        With ``tensors_of``, the two halves of ``load_all`` for a caller that decrypts several
        shards in one pass (``SealedModel.load_state_dict``).
        """
        for info in self.layout.tensors.values():
            self._fw.check_dtype(info.dtype)
        return self._fw.alloc(self._sealed.length)

    def tensors_of(self, base: Any) -> dict[str, Any]:
        """Every tensor as a view of ``base``, once the whole shard was decrypted into it."""
        return {
            info.name: self._fw.tensor(base, info.start, info)
            for info in self.layout.tensors.values()
        }

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None
        if self._owned_executor is not None:
            self._owned_executor.shutdown()
            self._owned_executor = None

    def __enter__(self) -> SealedSafeOpen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def safe_open(
    filename: str | Path,
    key: Buffer,
    framework: str = "np",
    device: str | None = None,
    *,
    model_id: str,
    model_version: int,
    threads: int | None = None,
    expected_name: str | None = None,
) -> SealedSafeOpen:
    """Counterpart of ``safetensors.safe_open(filename, framework, device)`` for one sealed
    shard. The key, model id and version are required: a shard opens only as the model
    version the caller expects (a shard of an older version is authentic but refused).

    The shard must also be the one the caller expects, by its plaintext name:
    ``expected_name``, or the name before ``.sealed`` in ``filename``. Every shard of a model
    is sealed under the same key, model and version, so without a name any of them would
    open; a ``filename`` without the suffix (a blob or cache path) therefore needs
    ``expected_name`` (``InputError`` otherwise)."""
    n = threads or default_threads()
    pool = ThreadPoolExecutor(n, thread_name_prefix="lessee-unseal") if n > 1 else None
    try:
        f, sealed = open_sealed_path(
            filename,
            key,
            model_id=model_id,
            model_version=model_version,
            expected_name=expected_name,
            executor=pool,
        )
    except BaseException:
        if pool is not None:
            pool.shutdown()
        raise
    if sealed.header.kind is not FileKind.SAFETENSORS:
        f.close()
        if pool is not None:
            pool.shutdown()
        raise SealedFormatError(f"{sealed.header.name} is not a safetensors shard", field="kind")
    try:
        return SealedSafeOpen(
            sealed, framework_name=framework, device=device, owned=f, owned_executor=pool
        )
    except BaseException:
        f.close()
        if pool is not None:
            pool.shutdown()
        raise


def load_file(
    filename: str | Path,
    key: Buffer,
    framework: str,
    *,
    model_id: str,
    model_version: int,
    device: str | None = None,
    threads: int | None = None,
    expected_name: str | None = None,
) -> dict[str, Any]:
    """Every tensor of one sealed shard (``safetensors.*.load_file`` counterpart); the shard
    must be the one expected, as for ``safe_open``."""
    with safe_open(
        filename,
        key,
        framework,
        device,
        model_id=model_id,
        model_version=model_version,
        threads=threads,
        expected_name=expected_name,
    ) as f:
        return f.load_all()
