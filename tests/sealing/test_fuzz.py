"""Hypothesis: parsers raise only typed errors; any corruption of sealed bytes is refused with a
typed error and never yields plaintext; seal/open round-trips for any length and chunk size."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.errors import LesseeError
from sealing.errors import BindingError, DecryptionError, SealedFormatError
from sealing.weights import (
    BytesSource,
    FileKind,
    open_bytes,
    open_sealed_file,
    parse_manifest,
    parse_shard_header,
    seal_bytes,
)
from sealing.weights._safetensors import parse_safetensors_header
from tests.sealing.helpers import DEK, MODEL_ID, SHARD1, VECTORS, VERSION, Rng

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEALED = (VECTORS / "sealed" / f"{SHARD1}.sealed").read_bytes()
HLEN = int.from_bytes(SEALED[12:16], "big")
MANIFEST = (VECTORS / "sealed" / "lessee-manifest.lsm").read_bytes()
SMALL = seal_bytes(
    b"x" * 5000,
    DEK,
    kind=FileKind.OTHER,
    name="small.bin",
    model_id=MODEL_ID,
    model_version=VERSION,
    key_id="k",
    rng=Rng(b"small"),
    chunk_size=4096,
)


def _open_all(data: bytes) -> bytes:
    src = BytesSource(data)
    f = open_sealed_file(src, len(src), DEK, model_id=MODEL_ID, model_version=VERSION)
    out = bytearray(f.length)
    f.read_all_into(memoryview(out))
    return bytes(out)


@FAST
@given(st.binary(max_size=600))
def test_header_parser_random_bytes(data: bytes) -> None:
    try:
        parse_shard_header(data)
    except SealedFormatError:
        pass


@FAST
@given(st.integers(0, HLEN - 1), st.integers(1, 255))
def test_header_single_byte_flip(pos: int, x: int) -> None:
    bad = bytearray(SEALED[:HLEN])
    bad[pos] ^= x
    try:
        h = parse_shard_header(bytes(bad))
    except SealedFormatError:
        return
    assert h.raw != SEALED[:HLEN]  # parsed, but it is a different header: its tag will fail


@FAST
@given(st.binary(max_size=800))
def test_manifest_parser_random_bytes(data: bytes) -> None:
    try:
        parse_manifest(data)
    except SealedFormatError:
        pass


@FAST
@given(st.integers(0, len(MANIFEST) - 1), st.integers(1, 255))
def test_manifest_single_byte_flip(pos: int, x: int) -> None:
    bad = bytearray(MANIFEST)
    bad[pos] ^= x
    try:
        m = parse_manifest(bytes(bad))
    except SealedFormatError:
        return
    assert m.raw != MANIFEST


@FAST
@given(st.binary(max_size=400))
def test_safetensors_header_parser_random_bytes(data: bytes) -> None:
    try:
        parse_safetensors_header(data, 8 + len(data) + 64)
    except SealedFormatError:
        pass


@FAST
@given(
    st.dictionaries(
        st.text(max_size=5),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["F32", "U8", "BF16", "F4", "X"]),
                "shape": st.lists(st.integers(-1, 5), max_size=3),
                "data_offsets": st.lists(st.integers(-1, 40), min_size=0, max_size=3),
            }
        ),
        max_size=4,
    ),
    st.integers(0, 64),
)
def test_safetensors_header_parser_structured(doc: dict[str, object], data_len: int) -> None:
    header = json.dumps(doc).encode()
    try:
        layout = parse_safetensors_header(header, 8 + len(header) + data_len)
    except SealedFormatError:
        return
    assert sum(t.nbytes for t in layout.tensors.values()) == data_len


@FAST
@given(st.integers(0, len(SMALL) - 1), st.integers(1, 255))
def test_any_single_byte_flip_of_a_sealed_file_is_refused(pos: int, x: int) -> None:
    bad = bytearray(SMALL)
    bad[pos] ^= x
    try:
        _open_all(bytes(bad))
    except (SealedFormatError, DecryptionError, BindingError):  # typed, nothing else
        return
    raise AssertionError("corrupted file opened")


@FAST
@given(st.integers(0, len(SMALL) - 1))
def test_any_truncation_is_refused(n: int) -> None:
    try:
        _open_all(SMALL[:n])
    except SealedFormatError:
        return
    raise AssertionError("truncated file opened")


@FAST
@given(
    st.dictionaries(st.integers(0, len(SEALED) - 1), st.integers(1, 255), min_size=1, max_size=8)
)
def test_random_corruption_of_a_shard_never_yields_plaintext(flips: dict[int, int]) -> None:
    bad = bytearray(SEALED)
    for pos, x in flips.items():  # distinct positions, so flips never cancel out
        bad[pos] ^= x
    try:
        _open_all(bytes(bad))
    except LesseeError:
        return
    raise AssertionError("corrupted shard opened")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=20000), st.sampled_from([4096, 8192, 16384]))
def test_seal_open_round_trip(data: bytes, chunk: int) -> None:
    sealed = seal_bytes(
        data,
        DEK,
        kind=FileKind.OTHER,
        name="f.bin",
        model_id=MODEL_ID,
        model_version=VERSION,
        key_id="k",
        rng=Rng(data[:16]),
        chunk_size=chunk,
    )
    assert len(sealed) == header_len(sealed) + len(data) + 16 * max(1, -(-len(data) // chunk))
    assert open_bytes(sealed, DEK, model_id=MODEL_ID, model_version=VERSION) == data


def header_len(sealed: bytes) -> int:
    return int.from_bytes(sealed[12:16], "big")
