"""Drop-in counterpart of ``safetensors.torch`` for sealed shards and models.

torch is an optional extra (``pip install lessee[torch]``); importing this module without it
raises ``ImportError`` with that hint, and nothing else in lessee imports torch.

``device="cuda"`` (or ``"cuda:1"``...) moves each tensor to the device as soon as its chunks
are decrypted and authenticated, so host memory holds one tensor at a time; without a device,
a shard is decrypted in parallel into one host buffer and tensors are views of it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

if importlib.util.find_spec("torch") is None:  # pragma: no cover - depends on the install
    raise ImportError("agent.loader.torch needs torch: pip install 'lessee[torch]'")

from agent.loader import _open
from agent.loader.model import load_model as _load_model
from sealing.weights._keys import Buffer

if TYPE_CHECKING:
    import torch


def load_file(
    filename: str | Path,
    key: Buffer,
    *,
    model_id: str,
    model_version: int,
    device: str | None = None,
    threads: int | None = None,
    expected_name: str | None = None,
) -> dict[str, torch.Tensor]:
    """All tensors of one sealed shard as torch tensors (on ``device`` if given);
    ``expected_name``: see ``safe_open``."""
    return _open.load_file(
        filename,
        key,
        "pt",
        model_id=model_id,
        model_version=model_version,
        device=device,
        threads=threads,
        expected_name=expected_name,
    )


def safe_open(
    filename: str | Path,
    key: Buffer,
    *,
    model_id: str,
    model_version: int,
    device: str | None = None,
    threads: int | None = None,
    expected_name: str | None = None,
) -> _open.SealedSafeOpen:
    """Lazy, per-tensor access to one sealed shard (torch tensors).

    ``expected_name`` is the shard's plaintext file name; it is required when ``filename``
    does not end in ``.sealed`` (see ``agent.loader.safe_open``)."""
    return _open.safe_open(
        filename,
        key,
        "pt",
        device,
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
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """A whole sealed model directory as one state dict of torch tensors."""
    return _load_model(
        sealed_dir,
        key,
        "pt",
        model_id=model_id,
        model_version=model_version,
        manifest_digest=manifest_digest,
        device=device,
        threads=threads,
    )
