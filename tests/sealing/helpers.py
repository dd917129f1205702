"""Shared material for the sealing tests: the committed vectors and small builders."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "sealed"
EXPECTED = json.loads((VECTORS / "expected.json").read_text())
DEK = bytes.fromhex(EXPECTED["dek_hex"])
MODEL_ID = EXPECTED["model_id"]
VERSION = EXPECTED["model_version"]
SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"


def generator() -> ModuleType:
    """The committed generator script, imported by path (tests/vectors is not a package)."""
    path = VECTORS.parent / "generate_sealed.py"
    spec = importlib.util.spec_from_file_location("generate_sealed", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def copy_sealed(tmp: Path, name: str = "sealed") -> Path:
    dst = tmp / name
    shutil.copytree(VECTORS / "sealed", dst)
    return dst


class Rng:
    """Deterministic salts for tests that seal (randomness is an argument)."""

    def __init__(self, seed: bytes) -> None:
        self.seed, self.n = seed, 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.n.to_bytes(8, "big")).digest()
            self.n += 1
        return out[:n]
