"""Loading hooks for serving stacks: Hugging Face ``transformers`` and vLLM.

transformers: ``PreTrainedModel.from_pretrained(None, config=..., state_dict=...)`` builds a
model from an in-memory state dict and never looks at a path, so the sealed directory is opened
here and plaintext goes straight from decryption into the model::

    from transformers import AutoModelForCausalLM
    from agent.loader.hf import from_pretrained_sealed

    model = from_pretrained_sealed(
        AutoModelForCausalLM, "/models/acme-7b.sealed", dek,
        model_id="acme/7b", model_version=3, manifest_digest=pinned_digest,
        torch_dtype="auto",
    )

The config (``config.json``, sealed along with the shards) is decrypted too; pass ``config=``
to use your own. transformers is not a dependency of lessee: the hook only needs an object
with a ``from_pretrained(None, config=..., state_dict=..., **kwargs)`` class method, and the
config class (``AutoConfig`` unless ``config_class`` is given) is imported lazily.

vLLM: a model-loader plugin (a ``BaseModelLoader`` subclass registered for a ``load_format``)
calls ``model.load_weights(weights)`` with an iterator of ``(name, tensor)``; pass it
``weights_iterator(...)`` from here. It yields tensor by tensor in file order, each on
``device`` as soon as its chunks are authenticated, so host memory holds one tensor at a time.
Tensor-parallel ranks can instead use ``SealedModel.safe_open(shard, "pt").get_slice(name)``,
which decrypts only the rows a rank needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.loader.model import SealedModel
from attest.errors import InputError
from attest.jsonutil import load_json
from sealing.errors import SealedFormatError
from sealing.weights._keys import Buffer

CONFIG_NAME = "config.json"


def load_for_transformers(
    sealed_dir: str | Path,
    key: Buffer,
    *,
    model_id: str,
    model_version: int,
    manifest_digest: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the sealed ``config.json`` as a dict, or None if none was sealed; the torch state dict)."""
    with SealedModel(
        sealed_dir,
        key,
        model_id=model_id,
        model_version=model_version,
        manifest_digest=manifest_digest,
        threads=threads,
    ) as model:
        config = None
        if CONFIG_NAME in model.files:
            # The fixed message is raised outside the handler, so the error keeps none of the
            # decrypted text (a JSONDecodeError holds the whole document; its message, or a
            # duplicate key's, may quote it).
            parsed = True
            try:
                config = load_json(model.read_file(CONFIG_NAME), what=CONFIG_NAME)
            except InputError:
                parsed = False
            if not parsed:
                raise SealedFormatError(f"{CONFIG_NAME} is not JSON", field="config")
            if not isinstance(config, dict):
                raise SealedFormatError(f"{CONFIG_NAME} is not an object", field="config")
        return config, model.load_state_dict("pt", device=device)


def from_pretrained_sealed(
    model_class: Any,
    sealed_dir: str | Path,
    key: Buffer,
    *,
    model_id: str,
    model_version: int,
    manifest_digest: str | None = None,
    config: Any = None,
    config_class: Any = None,
    device: str | None = None,
    threads: int | None = None,
    **kwargs: Any,
) -> Any:
    """``model_class.from_pretrained`` over a sealed directory (see the module docstring)."""
    config_dict, state_dict = load_for_transformers(
        sealed_dir,
        key,
        model_id=model_id,
        model_version=model_version,
        manifest_digest=manifest_digest,
        device=device,
        threads=threads,
    )
    if config is None:
        if config_dict is None:
            raise SealedFormatError(f"no {CONFIG_NAME} sealed with the model; pass config=")
        if config_class is None:
            config_class = importlib.import_module("transformers").AutoConfig
        config = config_class.for_model(**config_dict)
    return model_class.from_pretrained(None, config=config, state_dict=state_dict, **kwargs)


def weights_iterator(
    sealed_dir: str | Path,
    key: Buffer,
    *,
    model_id: str,
    model_version: int,
    manifest_digest: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> Iterator[tuple[str, Any]]:
    """``(name, torch tensor)`` pairs for vLLM's ``model.load_weights`` (see above)."""
    with SealedModel(
        sealed_dir,
        key,
        model_id=model_id,
        model_version=model_version,
        manifest_digest=manifest_digest,
        threads=threads,
    ) as model:
        model.weight_map()
        for shard in model.shards:
            with model.safe_open(shard, "pt", device or "cpu") as f:
                yield from f.iter_tensors()
