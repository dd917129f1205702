"""Known-answer vectors: committed plaintext + fixed key + fixed salts = committed ciphertext.

Also an independent decoder written from docs/formats/sealed-weights.md alone (offsets, HKDF
labels, nonce and AAD layout), so the document and the code cannot drift apart silently.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from safetensors.numpy import load_file as st_load_file

from agent.loader import SealedModel
from agent.loader import numpy as lnp
from sealing.weights import key_fingerprint, manifest_digest
from tests.sealing.helpers import (
    DEK,
    EXPECTED,
    MODEL_ID,
    SHARD1,
    SHARD2,
    VECTORS,
    VERSION,
    generator,
)


def test_generator_reproduces_the_committed_vectors_byte_for_byte(tmp_path: Path) -> None:
    gen = generator()
    out = tmp_path / "v"
    out.mkdir()
    expected = gen.generate(out)
    assert expected == EXPECTED
    for sub in ("plain", "sealed"):
        fresh = sorted(p.name for p in (out / sub).iterdir())
        committed = sorted(p.name for p in (VECTORS / sub).iterdir())
        assert fresh == committed
        for name in fresh:
            assert (out / sub / name).read_bytes() == (VECTORS / sub / name).read_bytes(), name


def test_committed_vectors_open_to_the_committed_plaintext(tmp_path: Path) -> None:
    with SealedModel(
        VECTORS / "sealed",
        DEK,
        model_id=MODEL_ID,
        model_version=VERSION,
        manifest_digest=EXPECTED["manifest_digest"],
    ) as model:
        assert model.manifest.key_id == key_fingerprint(DEK) == EXPECTED["key_id"]
        assert sorted(model.files) == sorted(EXPECTED["files"])
        model.unseal_to(tmp_path / "out")
    for name in EXPECTED["files"]:
        assert (tmp_path / "out" / name).read_bytes() == (VECTORS / "plain" / name).read_bytes()
    sd = lnp.load_model(VECTORS / "sealed", DEK, model_id=MODEL_ID, model_version=VERSION)
    ref = st_load_file(VECTORS / "plain" / SHARD1) | st_load_file(VECTORS / "plain" / SHARD2)
    assert sd.keys() == ref.keys()
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape and np.array_equal(sd[k], v)


def test_manifest_digest_and_file_digests_match_expected() -> None:
    raw = (VECTORS / "sealed" / "lessee-manifest.lsm").read_bytes()
    assert manifest_digest(raw) == EXPECTED["manifest_digest"]
    for name, info in EXPECTED["files"].items():
        data = (VECTORS / "sealed" / f"{name}.sealed").read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sealed_sha256"]
        assert len(data) == info["sealed_length"]


def _independent_open(data: bytes, dek: bytes) -> bytes:
    """Decrypt one sealed file following the format document only (no lessee code)."""
    assert data[:8] == b"\x89LSW\r\n\x1a\n"
    assert int.from_bytes(data[8:10], "big") == 1  # version
    assert int.from_bytes(data[10:12], "big") == 1  # algorithm
    hlen = int.from_bytes(data[12:16], "big")
    chunk = 1 << data[17]
    assert data[18:24] == bytes(6)
    pt_len = int.from_bytes(data[24:32], "big")
    salt = data[40:72]
    header = data[:hlen]
    okm = HKDF(hashes.SHA256(), 64, salt, b"lessee/sealed-weights/v1/file").derive(dek)
    tag = hmac.new(okm[32:], header[:-32], hashlib.sha256).digest()
    assert hmac.compare_digest(tag, header[-32:])
    digest = hashlib.sha256(header).digest()
    aead = AESGCM(okm[:32])
    count = max(1, -(-pt_len // chunk))
    out, pos = b"", hlen
    for i in range(count):
        size = min(chunk, pt_len - i * chunk) + 16
        nonce = bytes(4) + i.to_bytes(8, "big")
        aad = digest + i.to_bytes(8, "big") + (b"\x01" if i == count - 1 else b"\x00")
        out += aead.decrypt(nonce, data[pos : pos + size], aad)
        pos += size
    assert pos == len(data)
    return out


def test_independent_decoder_agrees_with_the_document() -> None:
    for name in EXPECTED["files"]:
        data = (VECTORS / "sealed" / f"{name}.sealed").read_bytes()
        assert _independent_open(data, DEK) == (VECTORS / "plain" / name).read_bytes(), name


def test_independent_manifest_check() -> None:
    raw = (VECTORS / "sealed" / "lessee-manifest.lsm").read_bytes()
    assert raw[:8] == b"\x89LSM\r\n\x1a\n"
    assert int.from_bytes(raw[12:16], "big") == len(raw)
    assert int.from_bytes(raw[16:24], "big") == VERSION
    assert int.from_bytes(raw[24:28], "big") == len(EXPECTED["files"])
    salt = raw[32:64]
    key = HKDF(hashes.SHA256(), 32, salt, b"lessee/sealed-weights/v1/manifest").derive(DEK)
    assert hmac.new(key, raw[:-32], hashlib.sha256).digest() == raw[-32:]
