"""The torch side of the loading hook (torch is the optional ``torch`` extra).

Imported only when a caller asks for ``framework="pt"``, so numpy users never pay for torch.
"""

from __future__ import annotations

from typing import Any

import torch

from sealing.errors import UnsupportedDtypeError
from sealing.weights import TensorInfo


def _dtypes() -> dict[str, torch.dtype]:
    table = {
        "BOOL": torch.bool,
        "U8": torch.uint8,
        "I8": torch.int8,
        "I16": torch.int16,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I32": torch.int32,
        "F32": torch.float32,
        "I64": torch.int64,
        "F64": torch.float64,
        "C64": torch.complex64,
    }
    # Newer dtypes, present depending on the torch version.
    for st_name, attr in (
        ("U16", "uint16"),
        ("U32", "uint32"),
        ("U64", "uint64"),
        ("F8_E4M3", "float8_e4m3fn"),
        ("F8_E5M2", "float8_e5m2"),
        ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
        ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
        ("F8_E8M0", "float8_e8m0fnu"),
        ("F4", "float4_e2m1fn_x2"),
    ):
        if hasattr(torch, attr):
            table[st_name] = getattr(torch, attr)
    return table


TORCH_DTYPES = _dtypes()


class TorchFramework:
    name = "torch"

    def alloc(self, nbytes: int) -> tuple[Any, memoryview]:
        base = torch.empty(nbytes, dtype=torch.uint8)
        return base, base.numpy().data

    def check_dtype(self, dtype: str) -> None:
        if dtype not in TORCH_DTYPES:
            raise UnsupportedDtypeError(f"torch {torch.__version__} has no dtype for {dtype}")

    def check_device(self, device: str | None) -> None:
        if device is not None:
            torch.device(device)  # raises on a malformed device string

    def tensor(self, base: Any, offset: int, info: TensorInfo) -> Any:
        self.check_dtype(info.dtype)
        dt = TORCH_DTYPES[info.dtype]
        shape = list(info.shape)
        if info.dtype == "F4":  # two values per byte: torch's storage shape halves the last dim
            if not shape or shape[-1] % 2:
                raise UnsupportedDtypeError("F4 tensor with an odd last dimension")
            shape[-1] //= 2
        raw = base[offset : offset + info.nbytes]
        if offset % dt.itemsize:
            raw = raw.clone()
        return raw.view(dt).reshape(shape)

    def to_device(self, tensor: Any, device: str | None) -> Any:
        if device is None or torch.device(device) == tensor.device:
            return tensor
        return tensor.to(device, non_blocking=False)
