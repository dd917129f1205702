"""A strict reader of the safetensors header (the plaintext inside a sealed shard).

safetensors layout: ``u64le N``, then ``N`` bytes of JSON (an object, possibly padded with
spaces), then the data. The JSON maps tensor names to ``{"dtype", "shape", "data_offsets"}``
(offsets relative to the start of the data) and may hold ``"__metadata__"`` (str -> str).

This follows the Rust reference implementation's checks (huggingface/safetensors
``Metadata::validate``): tensors tile the data exactly, in order, with no gap, overlap or
trailing byte, and each tensor's byte length equals its element count times its dtype's width.
It is stricter where the reference is lax: duplicate JSON keys and unknown fields are refused
(two parsers must not disagree about which bytes a name means), and floats or booleans are not
accepted as integers. It is used twice: before sealing (so nothing malformed is ever sealed) and
after decrypting (the header is authentic then, but a strict parser costs nothing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sealing.errors import SealedFormatError

#: safetensors' own header limit (``N_MAX`` / MAX_HEADER_SIZE in the reference: 100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000
#: More dimensions than any model uses (PyTorch itself caps tensors at 64 dims).
MAX_DIMS = 64
METADATA_KEY = "__metadata__"

#: dtype name -> bits per element, every dtype safetensors 0.8 writes. F4 and F6 are packed.
DTYPE_BITS: Mapping[str, int] = MappingProxyType(
    {
        "BOOL": 8,
        "U8": 8,
        "I8": 8,
        "F8_E5M2": 8,
        "F8_E4M3": 8,
        "F8_E4M3FNUZ": 8,
        "F8_E5M2FNUZ": 8,
        "F8_E8M0": 8,
        "F4": 4,
        "F6_E2M3": 6,
        "F6_E3M2": 6,
        "I16": 16,
        "U16": 16,
        "F16": 16,
        "BF16": 16,
        "I32": 32,
        "U32": 32,
        "F32": 32,
        "C64": 64,
        "F64": 64,
        "I64": 64,
        "U64": 64,
    }
)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: ``start``/``end`` are absolute byte offsets in the (plaintext) file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsLayout:
    """The parsed header: tensors in file order, metadata, where the data starts."""

    data_start: int  # 8 + N
    file_length: int
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str] | None


def header_size(prefix: bytes, file_length: int) -> int:
    """N from the first 8 bytes, bounded by the format's limit and by the file."""
    if len(prefix) < 8 or file_length < 8:
        raise SealedFormatError("shorter than a safetensors header", offset=0, field="N")
    n = int.from_bytes(prefix[:8], "little")
    if n > MAX_SAFETENSORS_HEADER or 8 + n > file_length:
        raise SealedFormatError(f"safetensors header length {n}", offset=0, field="N")
    return n


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SealedFormatError(f"duplicate key {key!r}", field="safetensors header")
        out[key] = value
    return out


def _bad_constant(name: str) -> Any:
    raise SealedFormatError(f"{name} is not JSON", field="safetensors header")


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SealedFormatError("must be a non-negative integer", field=field)
    return value


def parse_safetensors_header(header: bytes, file_length: int) -> SafetensorsLayout:
    """Parse the JSON header (the ``N`` bytes after the length) of a file of ``file_length``."""
    data_start = 8 + len(header)
    if data_start > file_length:
        raise SealedFormatError("header longer than the file", offset=8, field="header")
    if not header.startswith(b"{"):
        raise SealedFormatError("header is not a JSON object", offset=8, field="header")
    try:
        doc = json.loads(
            header.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_bad_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SealedFormatError("header is not valid JSON", offset=8, field="header") from exc
    if not isinstance(doc, dict):
        raise SealedFormatError("header is not a JSON object", offset=8, field="header")
    metadata: Mapping[str, str] | None = None
    if METADATA_KEY in doc:
        meta = doc.pop(METADATA_KEY)
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise SealedFormatError("__metadata__ must map text to text", field=METADATA_KEY)
        metadata = MappingProxyType(dict(meta))
    entries: list[TensorInfo] = []
    for name, spec in doc.items():
        entries.append(_tensor(name, spec, data_start))
    entries.sort(key=lambda t: (t.start, t.end))
    pos = data_start
    for t in entries:
        if t.start != pos:
            raise SealedFormatError(
                f"tensor {t.name!r} does not start where the previous one ends",
                field="data_offsets",
            )
        pos = t.end
    if pos != file_length:
        raise SealedFormatError(
            f"tensors end at {pos}, file is {file_length} bytes", field="data_offsets"
        )
    return SafetensorsLayout(
        data_start=data_start,
        file_length=file_length,
        tensors=MappingProxyType({t.name: t for t in entries}),
        metadata=metadata,
    )


def _tensor(name: str, spec: Any, data_start: int) -> TensorInfo:
    field = f"tensor {name!r}"
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise SealedFormatError("needs exactly dtype, shape, data_offsets", field=field)
    dtype = spec["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise SealedFormatError(f"unknown dtype {dtype!r}", field=field)
    shape_raw = spec["shape"]
    if not isinstance(shape_raw, list) or len(shape_raw) > MAX_DIMS:
        raise SealedFormatError(f"shape must be a list of at most {MAX_DIMS} dims", field=field)
    shape = tuple(_int(d, field) for d in shape_raw)
    offsets = spec["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise SealedFormatError("data_offsets must be [begin, end]", field=field)
    begin, end = _int(offsets[0], field), _int(offsets[1], field)
    if end < begin:
        raise SealedFormatError("data_offsets end before begin", field=field)
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != end - begin:
        raise SealedFormatError(
            f"{end - begin} bytes do not hold shape {list(shape)} of {dtype}", field=field
        )
    return TensorInfo(
        name=name, dtype=dtype, shape=shape, start=data_start + begin, end=data_start + end
    )
