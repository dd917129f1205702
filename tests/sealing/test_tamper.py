"""Every tamper case of issue #4's format list must fail, with the right typed error.

The sealed vectors (tests/vectors/sealed) are copied into a temporary directory and modified
the way a host that holds the files (but not the key) could. "Same key" cases seal a second
model, or the same model again, under the same data key: per-file salts and the header digest
in every chunk's AAD are what stop those splices, not the key.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.loader import SealedModel, seal_model
from agent.loader import numpy as lnp
from sealing.errors import (
    DECRYPTION_FAILED,
    BindingError,
    DecryptionError,
    SealedFormatError,
)
from sealing.weights import parse_manifest, parse_shard_header
from tests.sealing.helpers import (
    DEK,
    MODEL_ID,
    SHARD1,
    SHARD2,
    VECTORS,
    VERSION,
    Rng,
    copy_sealed,
    generator,
)

CS = 4096
TAGGED = CS + 16


@pytest.fixture(scope="module")
def others(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Other sealings under the SAME key: another model, an older version, a re-seal."""
    root = tmp_path_factory.mktemp("others")
    gen = generator()
    plain = root / "plain"
    gen.write_plain_model(plain)
    out = {}
    for name, model_id, version, seed in (
        ("other_model", "other-lab/other-model", VERSION, b"other"),
        ("older", MODEL_ID, VERSION - 1, b"older"),
        ("resealed", MODEL_ID, VERSION, b"reseal"),
    ):
        seal_model(
            plain,
            root / name,
            DEK,
            model_id=model_id,
            model_version=version,
            rng=Rng(seed),
            chunk_size=CS,
            threads=1,
        )
        out[name] = root / name
    return out


def _open(sealed: Path, **kw: object) -> dict[str, np.ndarray]:
    args: dict[str, object] = {"model_id": MODEL_ID, "model_version": VERSION} | kw
    return lnp.load_model(sealed, DEK, **args)  # type: ignore[arg-type]


def _body_offset(path: Path) -> int:
    data = path.read_bytes()
    return int.from_bytes(data[12:16], "big")


def _edit(path: Path, fn: object) -> None:
    data = bytearray(path.read_bytes())
    out = fn(data)  # type: ignore[operator]
    path.write_bytes(bytes(out if out is not None else data))


def test_untampered_copy_opens(tmp_path: Path) -> None:
    assert len(_open(copy_sealed(tmp_path))) == 5


@pytest.mark.parametrize("where", ["chunk0", "chunk1_tag", "final_chunk", "last_byte"])
def test_flipped_chunk_byte(tmp_path: Path, where: str) -> None:
    d = copy_sealed(tmp_path)
    f = d / f"{SHARD2}.sealed"
    h = _body_offset(f)
    offset = {
        "chunk0": h + 5,
        "chunk1_tag": h + TAGGED + CS + 3,
        "final_chunk": h + 3 * TAGGED + 1,
        "last_byte": f.stat().st_size - 1,
    }[where]

    def flip(b: bytearray) -> None:
        b[offset] ^= 0x01

    _edit(f, flip)
    with pytest.raises(DecryptionError) as exc:
        _open(d)
    assert str(exc.value) == DECRYPTION_FAILED
    with pytest.raises(DecryptionError):
        lnp.load_file(f, DEK, model_id=MODEL_ID, model_version=VERSION)


@pytest.mark.parametrize("offset", [8, 11, 16, 17, 20, 24, 31, 32, 39, 40, 71, 72, 80, -1, -32])
def test_any_header_change_fails(tmp_path: Path, offset: int) -> None:
    d = copy_sealed(tmp_path)
    f = d / f"{SHARD1}.sealed"
    h = _body_offset(f)
    pos = offset if offset >= 0 else h + offset

    def flip(b: bytearray) -> None:
        b[pos] ^= 0x04

    _edit(f, flip)
    # Against the manifest: the header digest no longer matches (or the header is malformed).
    with pytest.raises((BindingError, SealedFormatError)):
        _open(d)
    # Alone (no manifest): the header tag, a claim check, or the structure fails.
    with pytest.raises((DecryptionError, BindingError, SealedFormatError)):
        lnp.load_file(f, DEK, model_id=MODEL_ID, model_version=VERSION)


def test_reordered_chunks(tmp_path: Path) -> None:
    d = copy_sealed(tmp_path)
    f = d / f"{SHARD2}.sealed"
    h = _body_offset(f)

    def swap(b: bytearray) -> None:  # ciphertext swapped together with its tag
        c0, c1 = b[h : h + TAGGED], b[h + TAGGED : h + 2 * TAGGED]
        b[h : h + TAGGED], b[h + TAGGED : h + 2 * TAGGED] = c1, c0

    _edit(f, swap)
    with pytest.raises(DecryptionError):
        _open(d)


def test_duplicated_chunk_in_place_of_another(tmp_path: Path) -> None:
    d = copy_sealed(tmp_path)
    f = d / f"{SHARD2}.sealed"
    h = _body_offset(f)

    def dup(b: bytearray) -> None:
        b[h + 2 * TAGGED : h + 3 * TAGGED] = b[h + TAGGED : h + 2 * TAGGED]

    _edit(f, dup)
    with pytest.raises(DecryptionError):
        _open(d)


@pytest.mark.parametrize(
    "edit", ["drop_chunk", "insert_duplicate", "truncate_boundary", "truncate_mid", "append"]
)
def test_dropped_inserted_truncated_or_extended(tmp_path: Path, edit: str) -> None:
    d = copy_sealed(tmp_path)
    f = d / f"{SHARD2}.sealed"
    h = _body_offset(f)

    def change(b: bytearray) -> bytearray:
        if edit == "drop_chunk":
            return b[: h + TAGGED] + b[h + 2 * TAGGED :]
        if edit == "insert_duplicate":
            return b[: h + TAGGED] + b[h : h + TAGGED] + b[h + TAGGED :]
        if edit == "truncate_boundary":
            return b[: h + 3 * TAGGED]
        if edit == "truncate_mid":
            return b[:-7]
        return b + b"\x00" * 16

    _edit(f, change)
    with pytest.raises((BindingError, SealedFormatError)):
        _open(d)
    with pytest.raises(SealedFormatError, match="truncated or appended"):
        lnp.load_file(f, DEK, model_id=MODEL_ID, model_version=VERSION)


def test_truncation_with_rewritten_length_fails_the_header_tag(tmp_path: Path) -> None:
    d = copy_sealed(tmp_path)
    f = d / f"{SHARD2}.sealed"
    h = _body_offset(f)

    def cut(b: bytearray) -> bytearray:
        b[24:32] = (3 * CS).to_bytes(8, "big")  # claim 3 full chunks, drop the real last one
        return b[: h + 3 * TAGGED]

    _edit(f, cut)
    with pytest.raises(DecryptionError):
        lnp.load_file(f, DEK, model_id=MODEL_ID, model_version=VERSION)


def test_chunk_spliced_from_another_file_of_the_same_model(tmp_path: Path) -> None:
    d = copy_sealed(tmp_path)
    donor = (d / f"{SHARD2}.sealed").read_bytes()
    dh = int.from_bytes(donor[12:16], "big")
    f = d / f"{SHARD1}.sealed"
    h = _body_offset(f)

    def splice(b: bytearray) -> None:
        b[h : h + TAGGED] = donor[dh : dh + TAGGED]

    _edit(f, splice)
    with pytest.raises(DecryptionError):
        _open(d)


@pytest.mark.parametrize("donor", ["other_model", "resealed", "older"])
def test_record_spliced_from_a_file_sealed_under_the_same_key(
    tmp_path: Path, others: dict[str, Path], donor: str
) -> None:
    """Same key, same file name, same plaintext, same chunk index: only the salt differs."""
    d = copy_sealed(tmp_path)
    src = (others[donor] / f"{SHARD2}.sealed").read_bytes()
    sh = int.from_bytes(src[12:16], "big")
    f = d / f"{SHARD2}.sealed"
    h = _body_offset(f)

    def splice(b: bytearray) -> None:
        b[h + TAGGED : h + 2 * TAGGED] = src[sh + TAGGED : sh + 2 * TAGGED]

    _edit(f, splice)
    with pytest.raises(DecryptionError):
        _open(d)


@pytest.mark.parametrize("donor", ["other_model", "resealed", "older"])
def test_whole_shard_moved_in_from_another_sealing(
    tmp_path: Path, others: dict[str, Path], donor: str
) -> None:
    d = copy_sealed(tmp_path)
    shutil.copy(others[donor] / f"{SHARD1}.sealed", d / f"{SHARD1}.sealed")
    with pytest.raises(BindingError) as exc:
        _open(d)
    assert exc.value.reason == "shard_mismatch"


def test_shard_renamed_to_another_name(tmp_path: Path) -> None:
    d = copy_sealed(tmp_path)
    (d / f"{SHARD1}.sealed").unlink()
    shutil.copy(VECTORS / "sealed" / f"{SHARD2}.sealed", d / f"{SHARD1}.sealed")
    with pytest.raises(BindingError):
        _open(d)
    with pytest.raises(BindingError) as exc:  # alone: its header names the other shard
        lnp.load_file(d / f"{SHARD1}.sealed", DEK, model_id=MODEL_ID, model_version=VERSION)
    assert exc.value.reason == "shard_mismatch"


def test_manifest_shard_dropped_file_removed(tmp_path: Path) -> None:
    d = copy_sealed(tmp_path)
    (d / f"{SHARD2}.sealed").unlink()
    with pytest.raises(BindingError) as exc:
        _open(d)
    assert exc.value.reason == "manifest_mismatch"


def _drop_entry(raw: bytes, name: str) -> bytes:
    """Rewrite a manifest without one entry (what a keyless attacker can do)."""
    m = parse_manifest(raw)
    n = len(name.encode())
    start = raw.index(len(name.encode()).to_bytes(2, "big") + name.encode())
    body = bytearray(raw[:start] + raw[start + 2 + n + 56 :])
    body[12:16] = len(body).to_bytes(4, "big")
    body[24:28] = (len(m.entries) - 1).to_bytes(4, "big")
    return bytes(body)


def test_manifest_entry_dropped_fails_the_tag(tmp_path: Path) -> None:
    d = copy_sealed(tmp_path)
    mf = d / "lessee-manifest.lsm"
    mf.write_bytes(_drop_entry(mf.read_bytes(), "config.json"))
    (d / "config.json.sealed").unlink()
    assert len(parse_manifest(mf.read_bytes()).entries) == 5  # structurally fine
    with pytest.raises(DecryptionError):
        _open(d)


def test_shard_added_to_the_directory(tmp_path: Path, others: dict[str, Path]) -> None:
    d = copy_sealed(tmp_path)
    shutil.copy(others["resealed"] / f"{SHARD1}.sealed", d / "model-extra.safetensors.sealed")
    with pytest.raises(BindingError) as exc:
        _open(d)
    assert exc.value.reason == "manifest_mismatch"


def test_manifest_swapped_with_another_models(tmp_path: Path, others: dict[str, Path]) -> None:
    d = copy_sealed(tmp_path)
    shutil.copy(others["other_model"] / "lessee-manifest.lsm", d / "lessee-manifest.lsm")
    with pytest.raises(BindingError) as exc:
        _open(d)
    assert exc.value.reason == "model_mismatch"


def test_rollback_to_an_older_version(tmp_path: Path, others: dict[str, Path]) -> None:
    with pytest.raises(BindingError) as exc:
        _open(others["older"])  # authentic, same key, same model: but version 6, not 7
    assert exc.value.reason == "version_mismatch"
    d = copy_sealed(tmp_path)
    shutil.copy(others["older"] / f"{SHARD2}.sealed", d / f"{SHARD2}.sealed")
    with pytest.raises(BindingError) as exc:
        _open(d)
    assert exc.value.reason == "shard_mismatch"
    with pytest.raises(BindingError) as exc:  # an old shard alone
        lnp.load_file(d / f"{SHARD2}.sealed", DEK, model_id=MODEL_ID, model_version=VERSION)
    assert exc.value.reason == "version_mismatch"


def test_pinned_manifest_digest(tmp_path: Path, others: dict[str, Path]) -> None:
    d = copy_sealed(tmp_path)
    good = parse_manifest((d / "lessee-manifest.lsm").read_bytes()).digest
    assert len(_open(d, manifest_digest=good)) == 5
    shutil.copytree(others["resealed"], tmp_path / "re")
    # Same model, same version, same key, authentic: but not the manifest the policy pinned.
    with pytest.raises(BindingError) as exc:
        _open(tmp_path / "re", manifest_digest=good)
    assert exc.value.reason == "manifest_digest_mismatch"


def test_wrong_key(tmp_path: Path) -> None:
    d = copy_sealed(tmp_path)
    with pytest.raises(DecryptionError) as exc:
        lnp.load_model(d, bytes(32), model_id=MODEL_ID, model_version=VERSION)
    assert str(exc.value) == DECRYPTION_FAILED
    with pytest.raises(DecryptionError):
        lnp.load_file(d / f"{SHARD1}.sealed", bytes(32), model_id=MODEL_ID, model_version=VERSION)


def test_failed_read_wipes_the_output_buffer(tmp_path: Path) -> None:
    """Never partial plaintext: chunks that did authenticate are wiped when a later one fails."""
    d = copy_sealed(tmp_path)
    f = d / f"{SHARD2}.sealed"
    h = _body_offset(f)

    def flip(b: bytearray) -> None:
        b[h + 2 * TAGGED + 100] ^= 0x80  # chunk 2 of 4: chunks 0 and 1 decrypt fine first

    _edit(f, flip)
    with SealedModel(d, DEK, model_id=MODEL_ID, model_version=VERSION, threads=1) as model:
        sealed = model._sealed(SHARD2)
        buf = bytearray(b"\xaa" * sealed.length)
        with pytest.raises(DecryptionError):
            sealed.read_into(0, memoryview(buf))
        assert buf == bytes(len(buf))
        shard = model.safe_open(SHARD2)
        with pytest.raises(DecryptionError):
            shard.load_all()
        with pytest.raises(DecryptionError):
            shard.get_tensor("head.weight")
        assert shard.get_tensor("mask").shape == (13,)  # its chunk is intact


def test_header_parse_is_structural(tmp_path: Path) -> None:
    raw = (VECTORS / "sealed" / f"{SHARD1}.sealed").read_bytes()
    h = parse_shard_header(raw[: _body_offset(VECTORS / "sealed" / f"{SHARD1}.sealed")])
    assert (h.model_id, h.model_version, h.name, h.chunk_size) == (MODEL_ID, VERSION, SHARD1, CS)
