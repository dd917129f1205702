"""Generate the sealed-weights known-answer vectors in tests/vectors/sealed/.

Everything is deterministic: the data key is the public test key ``00 01 .. 1f`` and the
"random" salts come from a counter hashed with SHA-256, injected as the ``rng`` argument (the
same hook production fills with ``os.urandom``). The plaintext model is written with
safetensors' own writer. Run from the repository root:

    .venv/bin/python tests/vectors/generate_sealed.py          # rewrite the vectors
    .venv/bin/python tests/vectors/generate_sealed.py --check  # exit 1 if they drifted

tests/sealing/test_vectors.py regenerates into a temporary directory and compares byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.loader import seal_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "sealed"
#: Public test key. Never use it for anything real.
TEST_DEK = bytes(range(32))
MODEL_ID = "lessee-test/tiny-model"
MODEL_VERSION = 7
CHUNK_SIZE = 4096  # the smallest allowed, so small files span several chunks
SEED = b"lessee sealed-weights vectors v1"


class CounterRng:
    """Deterministic stand-in for os.urandom: SHA-256(seed || u64 counter), concatenated."""

    def __init__(self, seed: bytes = SEED) -> None:
        self.seed = seed
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        return out[:n]


def write_plain_model(path: Path) -> None:
    """Two shards with tensors that straddle 4 KiB chunk boundaries, an index, a config,
    an empty file and a file of exactly one chunk."""
    path.mkdir(parents=True)
    shard1 = {
        "embed.weight": np.arange(1536, dtype=np.float32).reshape(48, 32) / 7,
        "norm.bias": np.linspace(-1, 1, 10, dtype=np.float16),
        "empty": np.zeros((0, 4), dtype=np.int32),
    }
    shard2 = {
        "head.weight": (np.arange(2000, dtype=np.int64) * 3 - 1000).reshape(40, 50),
        "mask": np.arange(13) % 3 == 0,
    }
    save_file(shard1, path / "model-00001-of-00002.safetensors", metadata={"format": "np"})
    save_file(shard2, path / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in shard1}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in shard2}
    index = {"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    (path / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 32}))
    (path / "empty.bin").write_bytes(b"")
    (path / "one-chunk.bin").write_bytes(bytes(i % 251 for i in range(CHUNK_SIZE)))


def generate(out: Path) -> dict[str, object]:
    """Write plain/, sealed/ and expected.json under ``out``; return expected.json's content."""
    plain, sealed = out / "plain", out / "sealed"
    write_plain_model(plain)
    result = seal_model(
        plain,
        sealed,
        TEST_DEK,
        model_id=MODEL_ID,
        model_version=MODEL_VERSION,
        rng=CounterRng(),
        chunk_size=CHUNK_SIZE,
        threads=1,
    )
    expected: dict[str, object] = {
        "dek_hex": TEST_DEK.hex(),
        "model_id": MODEL_ID,
        "model_version": MODEL_VERSION,
        "chunk_size": CHUNK_SIZE,
        "key_id": result.manifest.key_id,
        "manifest_digest": result.manifest_digest,
        "files": {
            e.name: {
                "kind": e.kind.name,
                "plaintext_length": e.plaintext_length,
                "sealed_length": e.sealed_length,
                "header_digest": e.header_digest.hex(),
                "sealed_sha256": hashlib.sha256(
                    (sealed / f"{e.name}.sealed").read_bytes()
                ).hexdigest(),
            }
            for e in result.manifest.entries
        },
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    return expected


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "sealed"
        fresh.mkdir()
        generate(fresh)
        if "--check" in argv:
            committed = {k: v for k, v in _tree(OUT).items() if k != "README.md"}
            if _tree(fresh) != committed:
                print("sealed vectors drifted: rerun tests/vectors/generate_sealed.py")
                return 1
            return 0
        for sub in ("plain", "sealed"):
            shutil.rmtree(OUT / sub, ignore_errors=True)
            shutil.copytree(fresh / sub, OUT / sub)
        shutil.copy(fresh / "expected.json", OUT / "expected.json")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
