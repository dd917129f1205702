"""The two tamper cases of issue #4 where CoreWeave tensorizer's encryption fails and ours must not.

Both peers get the same tensors under the same 32-byte key, and a host that holds the files
but not the key edits them:

(a) **swap**: tensor ``a``'s ciphertext moved into tensor ``b``'s place together with its nonce
    and tags, and ``b``'s into ``a``'s. tensorizer stores each tensor's initial nonce and
    Poly1305 tags in that tensor's own header (its ``crypt_info``), and nothing binds them to
    the tensor's name or position, so the swapped file decrypts: ``a`` comes back holding
    ``b``'s values. Its optional ``verify_hash=True`` notices only because the SHA-256 it
    stores beside the header covers the name; that hash is unkeyed and unauthenticated, so
    setting the hash count to zero turns the check off and the swap loads again. In a sealed
    file there is no stored nonce to carry along: the nonce is the chunk index and the AAD
    holds the index, the final flag and the header digest, so the same swap (ciphertext with
    its tag) fails with the one opaque ``DecryptionError``.
(b) **splice**: tensor ``a``'s whole record (header, crypt_info, ciphertext) taken from another
    file serialized under the same key. tensorizer uses the key itself for every file, so the
    record decrypts and ``a`` loads the other file's values, with or without ``verify_hash``
    (the record's hash travels with it). Each sealed file has its own subkey (HKDF with a
    per-file salt) and the manifest pins every file's header digest, so the spliced chunks
    fail (``DecryptionError``) and a spliced header is refused (``BindingError``,
    ``shard_mismatch``).

tensorizer's file layout is parsed here byte for byte from its source (version 2.12.1:
``tensorizer/serialization.py`` and ``_crypt_info.py``), so the edits are exactly what an
attacker would write, and these tests fail if tensorizer changes either its layout or its
behaviour. tensorizer is a benchmark peer only (``pip install tensorizer``, which needs torch
and libsodium); CI does not install it, and then this module is skipped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tensorizer = pytest.importorskip(
    "tensorizer",
    reason="peer comparison needs CoreWeave tensorizer (pip install tensorizer; needs torch)",
)
torch = pytest.importorskip("torch", reason="tensorizer needs torch")
from tensorizer import (  # noqa: E402
    CryptographyError,
    DecryptionParams,
    EncryptionParams,
    TensorDeserializer,
    TensorSerializer,
)
from tensorizer import _crypt as _tz_crypt  # noqa: E402
from tensorizer.serialization import HashMismatchError  # noqa: E402

from agent.loader import SealedModel, seal_model  # noqa: E402
from agent.loader import numpy as lnp  # noqa: E402
from sealing.errors import DECRYPTION_FAILED, BindingError, DecryptionError  # noqa: E402
from tests.sealing.helpers import DEK, Rng  # noqa: E402

if not _tz_crypt.available:
    pytest.skip("tensorizer's encryption needs libsodium, not found", allow_module_level=True)

MODEL_ID = "peer-test/model"
VERSION = 3
SHARD = "model.safetensors"
CS = 4096  # sealed chunk size: tensors a and b are laid out on chunk boundaries
TAGGED = CS + 16
N = 4096  # float32 elements in a and in b: 16 KiB each, 4 sealed chunks each

#: Tensor a and b differ everywhere, so a swap is visible in every element.
A = np.arange(N, dtype=np.float32)
B = A + 100_000.0
C = np.full(16, 7.0, dtype=np.float32)  # after b, so neither a nor b holds the final chunk
#: The other file's a (same name, dtype, shape; other values): the splice donor.
A_OTHER = -np.arange(N, dtype=np.float32) - 1.0

# tensorizer's on-disk layout (all integers little-endian), from serialization.py.
TZ_MAGIC = b"|TZR|"
TZ_ENCRYPTION_VERSION = 3  # ENCRYPTION_TENSORIZER_VERSION: what an encrypting writer emits
TZ_FILE_HEADER = struct.Struct("<I32sQ8xQ")  # version, feature flags, tensor size, -, count
TZ_METADATA_RESERVED = 256 * 1024  # the writer reserves 256 KiB for the tensor index
TZ_XSALSA20_PARALLEL = 2  # CryptInfoChunk type of XSalsa20ParallelChunk
TZ_HASH_SHA256 = 1  # HashType.SHA256 (an encrypting writer stores no CRC32)
TZ_END_OF_RECORDS = bytes(8)  # u64 header length 0, written by TensorSerializer.close()


@dataclass(frozen=True)
class TzRecord:
    """One tensor's record in a tensorizer file: where each attacker-editable part lies."""

    name: str
    start: int  # the record's header, from the index
    hash_count_at: int  # the u8 count of the unauthenticated hash block
    crypt_info: slice  # u64 length + CryptInfo: the initial nonce and the Poly1305 tags
    data: slice  # the ciphertext
    nonce: bytes
    macs: tuple[bytes, ...]

    @property
    def end(self) -> int:
        return int(self.data.stop)


def _tz_parse(raw: bytes) -> dict[str, TzRecord]:
    """tensorizer's encrypted file, parsed strictly enough to edit it byte for byte."""
    assert raw[:5] == TZ_MAGIC
    version, flags, _size, count = TZ_FILE_HEADER.unpack_from(raw, 5)
    assert version == TZ_ENCRYPTION_VERSION
    assert flags == bytes(32)  # version 3 files carry no feature flags
    at = 5 + TZ_FILE_HEADER.size
    (meta_len,) = struct.unpack_from("<Q", raw, at)
    assert meta_len == TZ_METADATA_RESERVED
    at += 8
    index: list[tuple[str, int, int, int]] = []
    for _ in range(count):  # unversioned entries: every shape fits in u32
        (nl,) = struct.unpack_from("<H", raw, at)
        name = raw[at + 2 : at + 2 + nl].decode()
        at += 2 + nl + 1  # name, tensor type
        at += 1 + raw[at]  # dtype
        at += 1 + 4 * raw[at]  # shape
        header_at, data_at, data_len = struct.unpack_from("<QQQ", raw, at)
        at += 24
        index.append((name, header_at, data_at, data_len))
    records: dict[str, TzRecord] = {}
    expected_next = 5 + TZ_FILE_HEADER.size + 8 + TZ_METADATA_RESERVED
    for name, header_at, data_at, data_len in index:
        assert header_at == expected_next  # records follow the index back to back
        header_len, _module, _type, nl = struct.unpack_from("<QHBH", raw, header_at)
        o = header_at + 13
        assert raw[o : o + nl].decode() == name
        o += nl
        o += 1 + raw[o]  # dtype
        o += 1 + 4 * raw[o]  # shape
        (hash_len,) = struct.unpack_from("<H", raw, o)
        hash_count_at = o + 2
        assert raw[hash_count_at] == 1 and raw[hash_count_at + 1] == TZ_HASH_SHA256
        o += 2 + hash_len
        ci_at = o
        (ci_len,) = struct.unpack_from("<Q", raw, o)
        o += 8
        (n_chunks,) = struct.unpack_from("<H", raw, o)
        assert n_chunks == 1  # a raw key: no key-derivation chunk, one cipher chunk
        (chunk_len, chunk_type) = struct.unpack_from("<QH", raw, o + 2)
        assert chunk_type == TZ_XSALSA20_PARALLEL
        _chunk_size, nonce, n_macs = struct.unpack_from("<Q24sQ", raw, o + 12)
        macs_at = o + 12 + 40
        macs = tuple(raw[macs_at + 16 * i : macs_at + 16 * (i + 1)] for i in range(n_macs))
        assert 2 + 8 + chunk_len == ci_len and macs_at + 16 * n_macs == o + ci_len
        o += ci_len
        (stored_len,) = struct.unpack_from("<q", raw, o)
        o += 8
        assert (o, stored_len) == (data_at, data_len) and o == header_at + header_len
        records[name] = TzRecord(
            name, header_at, hash_count_at, slice(ci_at, o - 8), slice(o, o + data_len), nonce, macs
        )
        expected_next = o + data_len
    # A zero header length ends the records; nothing follows it.
    assert raw[expected_next:] == TZ_END_OF_RECORDS
    return records


def _tz_write(path: Path, tensors: dict[str, np.ndarray], key: bytes) -> None:
    ser = TensorSerializer(str(path), encryption=EncryptionParams(key))
    ser.write_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
    ser.close()


def _tz_load(path: Path, key: bytes, *, verify_hash: bool = False) -> dict[str, np.ndarray]:
    dec = DecryptionParams.from_key(key)
    with TensorDeserializer(str(path), device="cpu", encryption=dec, verify_hash=verify_hash) as d:
        return {str(k): d[k].detach().numpy().copy() for k in d}


def _swap(raw: bytearray, x: slice, y: slice) -> None:
    vx, vy = bytes(raw[x]), bytes(raw[y])
    assert len(vx) == len(vy)
    raw[x], raw[y] = vy, vx


@pytest.fixture(scope="module")
def tz(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two tensorizer files under one key: ours (a, b, c) and a donor with another a."""
    root = tmp_path_factory.mktemp("tensorizer")
    key = DEK
    main, donor = root / "model.tensors", root / "donor.tensors"
    _tz_write(main, {"a": A, "b": B, "c": C}, key)
    _tz_write(donor, {"a": A_OTHER, "b": B, "c": C}, key)
    return {"key": key, "main": main.read_bytes(), "donor": donor.read_bytes(), "root": root}


def _tz_tampered(tz: dict[str, Any], name: str, raw: bytes) -> Path:
    path = Path(tz["root"]) / name
    path.write_bytes(raw)
    return path


# ---- tensorizer ------------------------------------------------------------------------


def test_tensorizer_untampered_round_trip(tz: dict[str, Any]) -> None:
    recs = _tz_parse(tz["main"])
    assert list(recs) == ["a", "b", "c"]
    assert recs["a"].data.stop - recs["a"].data.start == A.nbytes
    assert recs["a"].nonce != recs["b"].nonce  # random per tensor, stored in the clear
    out = _tz_load(_tz_tampered(tz, "clean.tensors", tz["main"]), tz["key"], verify_hash=True)
    assert np.array_equal(out["a"], A) and np.array_equal(out["b"], B)


def test_tensorizer_detects_a_flipped_ciphertext_byte(tz: dict[str, Any]) -> None:
    """The contrast: each chunk is authenticated (Poly1305), so bit flips are caught."""
    raw = bytearray(tz["main"])
    raw[_tz_parse(tz["main"])["a"].data.start + 5] ^= 0x01
    with pytest.raises(CryptographyError):
        _tz_load(_tz_tampered(tz, "flip.tensors", bytes(raw)), tz["key"])


def _tz_swapped(tz: dict[str, Any]) -> bytearray:
    recs = _tz_parse(tz["main"])
    raw = bytearray(tz["main"])
    _swap(raw, recs["a"].crypt_info, recs["b"].crypt_info)  # the nonce and the tags
    _swap(raw, recs["a"].data, recs["b"].data)  # the ciphertext
    return raw


def test_tensorizer_accepts_a_tensor_swapped_with_its_nonce_and_tags(tz: dict[str, Any]) -> None:
    raw = _tz_swapped(tz)
    after = _tz_parse(bytes(raw))
    assert after["a"].nonce == _tz_parse(tz["main"])["b"].nonce  # the edit is what we meant
    out = _tz_load(_tz_tampered(tz, "swap.tensors", bytes(raw)), tz["key"])
    # Loads without any error, with a's and b's values exchanged.
    assert np.array_equal(out["a"], B)
    assert np.array_equal(out["b"], A)
    assert np.array_equal(out["c"], C)


def test_tensorizer_verify_hash_sees_the_swap_but_its_hash_is_unauthenticated(
    tz: dict[str, Any],
) -> None:
    raw = _tz_swapped(tz)
    with pytest.raises(HashMismatchError, match=r"Tensor '[ab]' failed SHA256 verification"):
        _tz_load(_tz_tampered(tz, "swap.tensors", bytes(raw)), tz["key"], verify_hash=True)
    recs = _tz_parse(tz["main"])  # the swap moved no header byte: same offsets
    for name in ("a", "b"):
        raw[recs[name].hash_count_at] = 0  # "no hashes": nothing keys or covers this byte
    out = _tz_load(_tz_tampered(tz, "swap0.tensors", bytes(raw)), tz["key"], verify_hash=True)
    assert np.array_equal(out["a"], B)
    assert np.array_equal(out["b"], A)


@pytest.mark.parametrize("verify_hash", [False, True])
def test_tensorizer_accepts_a_record_spliced_from_another_file_under_the_same_key(
    tz: dict[str, Any], verify_hash: bool
) -> None:
    recs, donor = _tz_parse(tz["main"]), _tz_parse(tz["donor"])
    ra, da = recs["a"], donor["a"]
    assert (ra.start, ra.end) == (da.start, da.end)  # same name, dtype, shape: same place
    assert ra.nonce != da.nonce and ra.macs != da.macs
    raw = bytearray(tz["main"])
    raw[ra.start : ra.end] = tz["donor"][da.start : da.end]  # header, crypt_info, ciphertext
    out = _tz_load(
        _tz_tampered(tz, f"splice{int(verify_hash)}.tensors", bytes(raw)),
        tz["key"],
        verify_hash=verify_hash,
    )
    assert np.array_equal(out["a"], A_OTHER)  # the other file's tensor, accepted
    assert np.array_equal(out["b"], B)


def test_tensorizer_stores_an_unkeyed_hash_of_the_plaintext(tz: dict[str, Any]) -> None:
    """A host can confirm a guess of a tensor's values: SHA-256 over the clear header + plaintext.

    (The sealed format hides the safetensors header and stores no plaintext digest at all.)
    """
    raw = tz["main"]
    for name, plain in (("a", A), ("b", B), ("c", C)):
        r = _tz_parse(raw)[name]
        value_at = r.hash_count_at + 3  # count, type, length, then the 32-byte digest
        stored = raw[value_at : value_at + 32]
        header = (
            bytearray(raw[r.start : r.crypt_info.start]) + raw[r.crypt_info.stop : r.data.start]
        )
        header[value_at - r.start : value_at - r.start + 32] = bytes(32)
        assert hashlib.sha256(bytes(header) + plain.tobytes()).digest() == stored


def test_tensorizer_accepts_a_file_with_its_last_tensor_dropped(tz: dict[str, Any]) -> None:
    """Not one of issue #4's two cases, but the table's "truncation" row: no file-level MAC."""
    recs = _tz_parse(tz["main"])
    raw = bytearray(tz["main"][: recs["c"].start] + TZ_END_OF_RECORDS)
    struct.pack_into("<Q", raw, 5 + TZ_FILE_HEADER.size - 8, 2)  # tensor count 3 -> 2
    out = _tz_load(_tz_tampered(tz, "drop.tensors", bytes(raw)), tz["key"], verify_hash=True)
    assert sorted(out) == ["a", "b"]
    assert np.array_equal(out["a"], A)


# ---- lessee sealed weights ---------------------------------------------------------------


def _safetensors_aligned(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file whose data starts at offset CS, so a and b fill whole chunks.

    The JSON header is padded with spaces (as the reference writer pads it) to CS - 8 bytes.
    """
    header: dict[str, Any] = {}
    off = 0
    for name, arr in tensors.items():
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [off, off + arr.nbytes],
        }
        off += arr.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= CS - 8
    text += b" " * (CS - 8 - len(text))
    path.write_bytes(
        struct.pack("<Q", len(text)) + text + b"".join(a.tobytes() for a in tensors.values())
    )


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tensors sealed by us, plus a donor model sealed under the same DEK."""
    from safetensors.numpy import load_file as st_load

    root = tmp_path_factory.mktemp("sealed")
    out: dict[str, Path] = {}
    for label, a, seed in (("main", A, b"peer-main"), ("donor", A_OTHER, b"peer-donor")):
        plain = root / f"plain-{label}"
        plain.mkdir()
        _safetensors_aligned(plain / SHARD, {"a": a, "b": B, "c": C})
        ref = st_load(plain / SHARD)  # the reference parser agrees with the hand layout
        assert np.array_equal(ref["a"], a) and np.array_equal(ref["b"], B)
        seal_model(
            plain,
            root / label,
            DEK,
            model_id=MODEL_ID,
            model_version=VERSION,
            rng=Rng(seed),
            chunk_size=CS,
            threads=1,
        )
        out[label] = root / label
    return out


def _sealed_copy(tmp: Path, sealed: dict[str, Path]) -> tuple[Path, Path, int]:
    d = tmp / "sealed"
    shutil.copytree(sealed["main"], d)
    f = d / f"{SHARD}.sealed"
    return d, f, int.from_bytes(f.read_bytes()[12:16], "big")


def _chunks(h: int, first: int, count: int) -> slice:
    """The byte range of sealed chunks [first, first + count): ciphertext and tag each."""
    return slice(h + first * TAGGED, h + (first + count) * TAGGED)


A_CHUNKS = (1, N * 4 // CS)  # chunk 0 is the safetensors header; a is chunks 1..4
B_CHUNKS = (1 + N * 4 // CS, N * 4 // CS)  # b is chunks 5..8; c and the final flag: chunk 9


def _load(d: Path) -> dict[str, np.ndarray]:
    return lnp.load_model(d, DEK, model_id=MODEL_ID, model_version=VERSION, threads=1)


def test_sealed_untampered_opens(tmp_path: Path, sealed: dict[str, Path]) -> None:
    d, f, h = _sealed_copy(tmp_path, sealed)
    out = _load(d)
    assert np.array_equal(out["a"], A) and np.array_equal(out["b"], B)
    # Chunk 0 the safetensors header, 1..4 a, 5..8 b, 9 (final, partial) c: what the edits assume.
    length = CS + A.nbytes + B.nbytes + C.nbytes
    assert f.stat().st_size == h + length + 16 * 10


def test_sealed_rejects_a_tensor_swapped_with_its_tags(
    tmp_path: Path, sealed: dict[str, Path]
) -> None:
    """tensorizer's case (a); there is no stored nonce to move: it is the chunk index."""
    d, f, h = _sealed_copy(tmp_path, sealed)
    raw = bytearray(f.read_bytes())
    _swap(raw, _chunks(h, *A_CHUNKS), _chunks(h, *B_CHUNKS))
    f.write_bytes(bytes(raw))
    with pytest.raises(DecryptionError) as exc:
        _load(d)
    assert str(exc.value) == DECRYPTION_FAILED
    with pytest.raises(DecryptionError):
        lnp.load_file(f, DEK, model_id=MODEL_ID, model_version=VERSION)
    # A lazy reader that opens only a, or only b, is refused too; untouched c still opens.
    with SealedModel(d, DEK, model_id=MODEL_ID, model_version=VERSION, threads=1) as model:
        shard = model.safe_open(SHARD)
        for name in ("a", "b"):
            with pytest.raises(DecryptionError):
                shard.get_tensor(name)
        assert np.array_equal(shard.get_tensor("c"), C)


def test_sealed_rejects_chunks_spliced_from_another_file_under_the_same_key(
    tmp_path: Path, sealed: dict[str, Path]
) -> None:
    """tensorizer's case (b), the ciphertext part: another file's a at a's very chunks."""
    d, f, h = _sealed_copy(tmp_path, sealed)
    donor = (sealed["donor"] / f"{SHARD}.sealed").read_bytes()
    assert int.from_bytes(donor[12:16], "big") == h  # same claims: same header length
    raw = bytearray(f.read_bytes())
    span = _chunks(h, *A_CHUNKS)
    raw[span] = donor[span]
    f.write_bytes(bytes(raw))
    with pytest.raises(DecryptionError) as exc:
        _load(d)
    assert str(exc.value) == DECRYPTION_FAILED
    with pytest.raises(DecryptionError):
        lnp.load_file(f, DEK, model_id=MODEL_ID, model_version=VERSION)


def test_sealed_rejects_a_record_spliced_with_its_header(
    tmp_path: Path, sealed: dict[str, Path]
) -> None:
    """tensorizer's case (b), whole record: the donor's authentic header and a's chunks."""
    d, f, h = _sealed_copy(tmp_path, sealed)
    donor = (sealed["donor"] / f"{SHARD}.sealed").read_bytes()
    raw = bytearray(f.read_bytes())
    raw[:h] = donor[:h]  # a genuine header: same key, model, version and name; its own salt
    span = _chunks(h, *A_CHUNKS)
    raw[span] = donor[span]
    f.write_bytes(bytes(raw))
    with pytest.raises(BindingError) as bexc:  # the manifest pins this file's header digest
        _load(d)
    assert bexc.value.reason == "shard_mismatch"
    with pytest.raises(DecryptionError):  # alone: the rest of the file is under another subkey
        lnp.load_file(f, DEK, model_id=MODEL_ID, model_version=VERSION)


def test_sealed_rejects_the_last_tensor_dropped(tmp_path: Path, sealed: dict[str, Path]) -> None:
    """The counterpart of the dropped tensorizer record: cut c's final chunk, fix the length."""
    d, f, h = _sealed_copy(tmp_path, sealed)
    raw = bytearray(f.read_bytes()[: h + 9 * TAGGED])
    raw[24:32] = (9 * CS).to_bytes(8, "big")  # plaintext_length now ends after b
    f.write_bytes(bytes(raw))
    with pytest.raises(BindingError) as exc:  # the manifest lists every file's size and digest
        _load(d)
    assert exc.value.reason == "shard_mismatch"
    with pytest.raises(DecryptionError):  # alone: the header tag covers plaintext_length
        lnp.load_file(f, DEK, model_id=MODEL_ID, model_version=VERSION)
