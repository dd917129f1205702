"""Strict structure: each malformed field gets its typed error, naming field and offset."""

from __future__ import annotations

import io

import pytest

from agent.cli._progress import Progress
from attest.errors import InputError
from sealing.errors import SealedFormatError, UnsupportedFormatError
from sealing.weights import FileKind, parse_manifest, parse_shard_header, seal_bytes
from sealing.weights._format import MAX_HEADER_BYTES, MAX_MODEL_VERSION, validate_name
from sealing.weights.recipes import chunk_log2_of
from tests.sealing.helpers import DEK, SHARD1, VECTORS, Rng

RAW = (VECTORS / "sealed" / f"{SHARD1}.sealed").read_bytes()
HEADER = RAW[: int.from_bytes(RAW[12:16], "big")]
MANIFEST = (VECTORS / "sealed" / "lessee-manifest.lsm").read_bytes()


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize(
    ("offset", "value", "error", "field"),
    [
        (0, b"\x88", SealedFormatError, "magic"),
        (8, b"\x00\x02", UnsupportedFormatError, "format_version"),
        (10, b"\x00\x07", UnsupportedFormatError, "algorithm"),
        (12, b"\x00\x00\x00\x10", SealedFormatError, "header_length"),
        (16, b"\x09", SealedFormatError, "kind"),
        (17, b"\x0b", SealedFormatError, "chunk_size"),
        (17, b"\x1b", SealedFormatError, "chunk_size"),
        (18, b"\x01", SealedFormatError, "reserved"),
        (23, b"\x01", SealedFormatError, "reserved"),
        (24, b"\x01", SealedFormatError, "plaintext_length"),
        (32, b"\x80", SealedFormatError, "model_version"),
        (32, (1 << 32).to_bytes(8, "big"), SealedFormatError, "model_version"),
        (72, b"\x01\x00", SealedFormatError, "model_id"),
    ],
)
def test_header_field_errors(offset: int, value: bytes, error: type, field: str) -> None:
    with pytest.raises(error) as exc:
        parse_shard_header(_with(HEADER, offset, value))
    assert exc.value.field == field
    assert type(exc.value) is error


def test_header_round_trip_and_no_trailing_data() -> None:
    h = parse_shard_header(HEADER)
    assert h.raw == HEADER and h.kind is FileKind.SAFETENSORS and h.sealed_length == len(RAW)
    with pytest.raises(SealedFormatError):
        parse_shard_header(HEADER + b"\x00")
    with pytest.raises(SealedFormatError):
        parse_shard_header(HEADER[:-1])
    assert len(HEADER) <= MAX_HEADER_BYTES


@pytest.mark.parametrize(
    ("offset", "value", "error", "field"),
    [
        (0, b"\x00", SealedFormatError, "magic"),
        (8, b"\x00\x09", UnsupportedFormatError, "format_version"),
        (10, b"\x00\x09", UnsupportedFormatError, "algorithm"),
        (12, b"\x00\x00\x00\x00", SealedFormatError, "length"),
        (24, b"\x00\x00\x00\x00", SealedFormatError, "entry_count"),
        (28, b"\x01", SealedFormatError, "reserved"),
        (16, (1 << 32).to_bytes(8, "big"), SealedFormatError, "model_version"),
    ],
)
def test_manifest_field_errors(offset: int, value: bytes, error: type, field: str) -> None:
    with pytest.raises(error) as exc:
        parse_manifest(_with(MANIFEST, offset, value))
    assert exc.value.field == field and type(exc.value) is error


def test_manifest_trailing_data_and_order() -> None:
    m = parse_manifest(MANIFEST)
    assert [e.name for e in m.entries] == sorted(e.name for e in m.entries)
    with pytest.raises(SealedFormatError):
        parse_manifest(MANIFEST + b"\x00")


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".hidden", "a/b", "a\\b", "a\x00b", "x" * 256, "tab\there"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(SealedFormatError):
        validate_name(name)


@pytest.mark.parametrize("size", [0, 1000, 2048, 4097, 1 << 27, -4096])
def test_bad_chunk_sizes(size: int) -> None:
    with pytest.raises(SealedFormatError):
        chunk_log2_of(size)


def test_sealing_refuses_bad_identity() -> None:
    for kw in ({"model_id": ""}, {"model_version": -1}, {"key_id": "has space"}, {"name": "../x"}):
        args: dict[str, object] = {
            "kind": FileKind.OTHER,
            "name": "f",
            "model_id": "m",
            "model_version": 1,
            "key_id": "k",
            "rng": Rng(b"r"),
        } | kw
        with pytest.raises(SealedFormatError):
            seal_bytes(b"abc", DEK, **args)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="32 bytes"):
        seal_bytes(
            b"abc",
            DEK[:16],
            kind=FileKind.OTHER,
            name="f",
            model_id="m",
            model_version=1,
            key_id="k",
            rng=Rng(b"r"),
        )


@pytest.mark.parametrize("version", [1 << 32, (1 << 63) - 1])
def test_sealing_refuses_a_version_key_release_cannot_carry(version: int) -> None:
    """Key release binds the version as a u32 (``release_info``): a model sealed with a larger
    version could never be released, so sealing refuses it up front."""
    kw: dict[str, object] = {
        "kind": FileKind.OTHER,
        "name": "f",
        "model_id": "m",
        "key_id": "k",
        "rng": Rng(b"r"),
    }
    with pytest.raises(SealedFormatError, match=f"0..{MAX_MODEL_VERSION}") as exc:
        seal_bytes(b"abc", DEK, model_version=version, **kw)  # type: ignore[arg-type]
    assert exc.value.field == "model_version"
    sealed = seal_bytes(b"abc", DEK, model_version=MAX_MODEL_VERSION, **kw)  # type: ignore[arg-type]
    h = parse_shard_header(sealed[: int.from_bytes(sealed[12:16], "big")])
    assert h.model_version == MAX_MODEL_VERSION == (1 << 32) - 1


def test_progress_line() -> None:
    buf = io.StringIO()
    p = Progress("sealing", 2048, stream=buf)
    p.advance(1024)
    p.advance(1024)
    p.close()
    assert buf.getvalue().startswith("sealing: 100.0% 2.0 KiB/2.0 KiB")
    quiet = io.StringIO()
    q = Progress("x", 10, quiet=True, stream=quiet)
    q.advance(10)
    q.close()
    assert quiet.getvalue() == ""
