"""The weight-loading hook: sealed safetensors into numpy or torch, never via disk.

* ``agent.loader.numpy`` / ``agent.loader.torch``: ``load_file``, ``safe_open``,
  ``load_model``, the counterparts of ``safetensors.numpy`` / ``safetensors.torch``.
* ``SealedModel``: an opened sealed model directory (manifest, lazy shards, state dict).
* ``seal_model``: seal a model directory (used by ``lessee seal``).
* ``agent.loader.hf``: transformers ``from_pretrained`` and vLLM ``load_weights`` hooks.
"""

from agent.loader._files import MANIFEST_NAME, SEALED_SUFFIX
from agent.loader._open import SealedSafeOpen, SealedSlice, load_file, safe_open
from agent.loader.model import (
    Inspection,
    SealedModel,
    SealResult,
    inspect_sealed_dir,
    load_model,
    seal_model,
)

__all__ = [
    "MANIFEST_NAME",
    "SEALED_SUFFIX",
    "Inspection",
    "SealResult",
    "SealedModel",
    "SealedSafeOpen",
    "SealedSlice",
    "inspect_sealed_dir",
    "load_file",
    "load_model",
    "safe_open",
    "seal_model",
]
