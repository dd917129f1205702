"""Drop-in counterpart of ``safetensors.numpy`` for sealed shards and models.

``safetensors.numpy.load_file(path)`` becomes ``load_file(path, key, model_id=..., model_version=...)``.
A single shard must be named ``<name>.sealed`` or opened with ``expected_name=<name>``: the
name its header was sealed under is what tells one shard of a model from another.
Arrays of one shard are views of one buffer that the shard was decrypted into (no second
copy); an array keeps that buffer alive. numpy has no BF16 or FP8 dtypes: shards holding them
raise ``UnsupportedDtypeError`` here (as safetensors.numpy does); load those with torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agent.loader import _open
from agent.loader.model import load_model as _load_model
from sealing.weights._keys import Buffer


def load_file(
    filename: str | Path,
    key: Buffer,
    *,
    model_id: str,
    model_version: int,
    threads: int | None = None,
    expected_name: str | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    """All tensors of one sealed shard as numpy arrays (``expected_name``: see ``safe_open``)."""
    return _open.load_file(
        filename,
        key,
        "np",
        model_id=model_id,
        model_version=model_version,
        threads=threads,
        expected_name=expected_name,
    )


def safe_open(
    filename: str | Path,
    key: Buffer,
    *,
    model_id: str,
    model_version: int,
    threads: int | None = None,
    expected_name: str | None = None,
) -> _open.SealedSafeOpen:
    """Lazy, per-tensor access to one sealed shard (numpy arrays).

    ``expected_name`` is the shard's plaintext file name; it is required when ``filename``
    does not end in ``.sealed`` (see ``agent.loader.safe_open``)."""
    return _open.safe_open(
        filename,
        key,
        "np",
        model_id=model_id,
        model_version=model_version,
        threads=threads,
        expected_name=expected_name,
    )


def load_model(
    sealed_dir: str | Path,
    key: Buffer,
    *,
    model_id: str,
    model_version: int,
    manifest_digest: str | None = None,
    threads: int | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    """A whole sealed model directory as one state dict of numpy arrays."""
    return _load_model(
        sealed_dir,
        key,
        "np",
        model_id=model_id,
        model_version=model_version,
        manifest_digest=manifest_digest,
        threads=threads,
    )
