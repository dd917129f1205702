"""The loading hook: round trips for every safetensors dtype, lazy and sliced reads that touch
only the chunks they need, whole directories, torch, the transformers/vLLM hooks, key files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import TensorSpec, serialize

from agent.loader import SealedModel, seal_model
from agent.loader import numpy as lnp
from agent.loader._files import FileSink
from agent.loader._open import SealedSafeOpen
from agent.loader.hf import from_pretrained_sealed, load_for_transformers, weights_iterator
from agent.loader.keyfile import read_key_file, write_key_file
from attest.errors import InputError
from sealing.errors import BindingError, DecryptionError, SealedFormatError, UnsupportedDtypeError
from sealing.weights import (
    BytesSource,
    FileKind,
    key_fingerprint,
    open_sealed_file,
    seal_bytes,
)
from tests.sealing.helpers import DEK, MODEL_ID, SHARD1, SHARD2, VECTORS, VERSION, Rng, copy_sealed

CS = 4096
#: safetensors' TensorSpec dtype names -> (header dtype, bytes for 6 elements).
ALL_DTYPES = {
    "bool": ("BOOL", 6),
    "uint8": ("U8", 6),
    "int8": ("I8", 6),
    "int16": ("I16", 12),
    "uint16": ("U16", 12),
    "float16": ("F16", 12),
    "bfloat16": ("BF16", 12),
    "int32": ("I32", 24),
    "uint32": ("U32", 24),
    "float32": ("F32", 24),
    "int64": ("I64", 48),
    "uint64": ("U64", 48),
    "float64": ("F64", 48),
    "complex64": ("C64", 48),
    "float8_e4m3fn": ("F8_E4M3", 6),
    "float8_e5m2": ("F8_E5M2", 6),
    "float8_e4m3fnuz": ("F8_E4M3FNUZ", 6),
    "float8_e5m2fnuz": ("F8_E5M2FNUZ", 6),
    "float8_e8m0fnu": ("F8_E8M0", 6),
    "float4_e2m1fn_x2": ("F4", 6),  # storage shape [2, 3] = logical [2, 6], packed
}


def _all_dtype_file(repeat: int = 1) -> bytes:
    """Every dtype safetensors writes, through safetensors' own serializer."""
    rng = np.random.default_rng(5)
    keep = []
    specs = {}
    for name, (_, nbytes) in ALL_DTYPES.items():
        data = rng.integers(0, 256, nbytes * repeat, dtype=np.uint8)
        if name == "bool":
            data = data % 2
        keep.append(data)
        shape = [2 * repeat, 3]  # for F4 the storage shape; the header says [2r, 6]
        specs[f"t.{name}"] = TensorSpec(
            dtype=name, shape=shape, data_ptr=data.ctypes.data, data_len=data.nbytes
        )
    specs["t.empty"] = TensorSpec(dtype="float32", shape=[0, 7], data_ptr=0, data_len=0)
    out = serialize(specs, {"purpose": "dtype round trip"})
    del keep
    return bytes(out)


def _seal_file(tmp: Path, data: bytes, name: str = "m.safetensors") -> Path:
    sealed = seal_bytes(
        data,
        DEK,
        kind=FileKind.SAFETENSORS,
        name=name,
        model_id=MODEL_ID,
        model_version=VERSION,
        key_id=key_fingerprint(DEK),
        rng=Rng(name.encode()),
        chunk_size=CS,
    )
    path = tmp / f"{name}.sealed"
    path.write_bytes(sealed)
    return path


def _raw_views(data: bytes) -> dict[str, tuple[str, list[int], bytes]]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    return {
        k: (v["dtype"], v["shape"], data[base + v["data_offsets"][0] : base + v["data_offsets"][1]])
        for k, v in header.items()
    }


def test_every_dtype_round_trips_byte_for_byte_in_numpy_and_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    data = _all_dtype_file(repeat=500)  # ~150 KiB: tensors straddle many 4 KiB chunks
    path = _seal_file(tmp_path, data)
    raw = _raw_views(data)
    assert {v[0] for v in raw.values()} >= {d for d, _ in ALL_DTYPES.values()}
    with lnp.safe_open(path, DEK, model_id=MODEL_ID, model_version=VERSION) as f:
        assert f.metadata() == {"purpose": "dtype round trip"}
        assert f.keys() == sorted(raw)
        for name, (dtype, shape, blob) in raw.items():
            if dtype in (
                "BF16",
                "F8_E4M3",
                "F8_E5M2",
                "F8_E4M3FNUZ",
                "F8_E5M2FNUZ",
                "F8_E8M0",
                "F4",
            ):
                with pytest.raises(UnsupportedDtypeError):
                    f.get_tensor(name)
                continue
            arr = f.get_tensor(name)
            assert list(arr.shape) == shape and arr.tobytes() == blob, name
    with pytest.raises(UnsupportedDtypeError):
        lnp.load_file(path, DEK, model_id=MODEL_ID, model_version=VERSION)
    from agent.loader import torch as lpt

    sd = lpt.load_file(path, DEK, model_id=MODEL_ID, model_version=VERSION, threads=2)
    assert sd.keys() == raw.keys()
    for name, (_dtype, shape, blob) in raw.items():
        t = sd[name]
        assert isinstance(t, torch.Tensor)
        got = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        assert got == blob, name
        if _dtype != "F4":
            assert list(t.shape) == shape


def test_numpy_load_matches_safetensors_numpy(tmp_path: Path) -> None:
    from safetensors.numpy import save

    rng = np.random.default_rng(1)
    tensors = {
        "a": rng.standard_normal((33, 65)).astype(np.float32),
        "b": rng.integers(-9, 9, (1000,), dtype=np.int16),
        "c": np.zeros((0,), np.float64),
        "d": np.array(3.5, dtype=np.float64),  # a scalar: shape []
        "e": rng.standard_normal((17, 3)).astype(np.complex64),
    }
    data = save(tensors)
    path = _seal_file(tmp_path, data)
    for threads in (1, 2):
        out = lnp.load_file(path, DEK, model_id=MODEL_ID, model_version=VERSION, threads=threads)
        for k, v in tensors.items():
            assert out[k].dtype == v.dtype and out[k].shape == v.shape
            assert np.array_equal(out[k], v)


class CountingSource(BytesSource):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def read_exact_at(self, offset: int, buf: memoryview) -> None:
        self.reads.append((offset, buf.nbytes))
        super().read_exact_at(offset, buf)


def test_lazy_tensor_and_row_slice_touch_only_their_chunks() -> None:
    rows, cols = 4096, 1024  # a 4 MiB U8 tensor: 1024 chunks of 4 KiB
    blob = (np.arange(rows * cols, dtype=np.uint32) % 251).astype(np.uint8)
    data = bytes(
        serialize(
            {
                "big": TensorSpec(
                    dtype="uint8",
                    shape=[rows, cols],
                    data_ptr=blob.ctypes.data,
                    data_len=blob.nbytes,
                ),
                "small": TensorSpec(
                    dtype="uint8", shape=[4], data_ptr=blob.ctypes.data, data_len=4
                ),
            },
            None,
        )
    )
    sealed = seal_bytes(
        data,
        DEK,
        kind=FileKind.SAFETENSORS,
        name="big.safetensors",
        model_id=MODEL_ID,
        model_version=VERSION,
        key_id="k",
        rng=Rng(b"big"),
        chunk_size=CS,
    )
    src = CountingSource(sealed)
    f = open_sealed_file(src, len(src), DEK, model_id=MODEL_ID, model_version=VERSION)
    with SealedSafeOpen(f) as st:
        opened = len(src.reads)  # header (2 reads), final chunk, safetensors header chunk
        assert opened <= 5
        sl = st.get_slice("big")
        assert sl.get_shape() == [rows, cols] and sl.get_dtype() == "U8"
        assert len(src.reads) == opened  # shape without decrypting anything
        part = sl[100:102]
        assert np.array_equal(part, blob.reshape(rows, cols)[100:102])
        assert len(src.reads) - opened <= 2  # 2 KiB of rows: one or two chunks
        before = len(src.reads)
        assert np.array_equal(sl[7, 5:9], blob.reshape(rows, cols)[7, 5:9])
        assert np.array_equal(sl[-1], blob.reshape(rows, cols)[-1])
        assert np.array_equal(sl[10:4000:997, ::3], blob.reshape(rows, cols)[10:4000:997, ::3])
        assert len(src.reads) - before < 1024
        small = st.get_tensor("small")
        assert small.tolist() == blob[:4].tolist()


def test_huge_shape_is_described_without_allocating(tmp_path: Path) -> None:
    data = bytes(
        serialize(
            {
                "huge": TensorSpec(
                    dtype="float32", shape=[0, 1 << 40, 1 << 20], data_ptr=0, data_len=0
                )
            },
            None,
        )
    )
    path = _seal_file(tmp_path, data)
    with lnp.safe_open(path, DEK, model_id=MODEL_ID, model_version=VERSION) as f:
        assert f.get_slice("huge").get_shape() == [0, 1 << 40, 1 << 20]
        assert f.get_tensor("huge").shape == (0, 1 << 40, 1 << 20)


def test_model_directory_state_dict_numpy_and_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from agent.loader import torch as lpt

    a = lnp.load_model(VECTORS / "sealed", DEK, model_id=MODEL_ID, model_version=VERSION, threads=1)
    b = lpt.load_model(
        VECTORS / "sealed", DEK, model_id=MODEL_ID, model_version=VERSION, device="cpu"
    )
    assert a.keys() == b.keys() == {"embed.weight", "norm.bias", "empty", "head.weight", "mask"}
    for k in a:
        assert isinstance(b[k], torch.Tensor)
        assert np.array_equal(a[k], b[k].numpy())
    with SealedModel(VECTORS / "sealed", DEK, model_id=MODEL_ID, model_version=VERSION) as m:
        wm = m.weight_map()
        assert wm["head.weight"] == "model-00002-of-00002.safetensors"
        with m.safe_open(SHARD1, "pt", "cpu") as f:
            names = [n for n, _ in f.iter_tensors()]
        assert sorted(names) == ["embed.weight", "empty", "norm.bias"]


def test_index_that_disagrees_with_the_shards_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for p in (VECTORS / "plain").iterdir():
        (plain / p.name).write_bytes(p.read_bytes())
    idx = json.loads((plain / "model.safetensors.index.json").read_text())
    idx["weight_map"]["mask"] = SHARD1  # lies about where "mask" lives
    (plain / "model.safetensors.index.json").write_text(json.dumps(idx))
    seal_model(
        plain,
        tmp_path / "s",
        DEK,
        model_id=MODEL_ID,
        model_version=VERSION,
        rng=Rng(b"i"),
        threads=1,
    )
    with pytest.raises(SealedFormatError, match="weight_map"):
        lnp.load_model(tmp_path / "s", DEK, model_id=MODEL_ID, model_version=VERSION)


def test_seal_refuses_a_malformed_safetensors_file(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "bad.safetensors").write_bytes(b"\x10" + bytes(7) + b'{"a":{"dtype":"F32"}}   ')
    with pytest.raises(SealedFormatError):
        seal_model(plain, tmp_path / "s", DEK, model_id="m", model_version=1, rng=Rng(b"x"))
    assert not any((tmp_path / "s").iterdir())


class FakePretrained:
    """Stands in for a transformers model class (transformers is not installed here): it
    records what ``from_pretrained`` receives, which is the whole contract of the hook."""

    @classmethod
    def from_pretrained(
        cls, path: Any, *, config: Any, state_dict: dict[str, Any], **kw: Any
    ) -> Any:
        return {"path": path, "config": config, "state_dict": state_dict, "kw": kw}


class FakeConfig:
    @staticmethod
    def for_model(**kw: Any) -> dict[str, Any]:
        return {"config_from": kw}


def test_transformers_hook_shape() -> None:
    pytest.importorskip("torch")
    config, sd = load_for_transformers(
        VECTORS / "sealed", DEK, model_id=MODEL_ID, model_version=VERSION
    )
    assert config == {"model_type": "tiny", "hidden_size": 32}
    assert set(sd) == {"embed.weight", "norm.bias", "empty", "head.weight", "mask"}
    out = from_pretrained_sealed(
        FakePretrained,
        VECTORS / "sealed",
        DEK,
        model_id=MODEL_ID,
        model_version=VERSION,
        config_class=FakeConfig,
        torch_dtype="auto",
    )
    assert out["path"] is None and out["kw"] == {"torch_dtype": "auto"}
    assert out["config"] == {"config_from": {"model_type": "tiny", "hidden_size": 32}}
    assert set(out["state_dict"]) == set(sd)


@pytest.mark.parametrize(
    "config", [b'{"secret_dim": 4096', b'{"secret_dim": 1, "secret_dim": 2}'], ids=["cut", "dup"]
)
def test_a_sealed_config_that_is_not_json_keeps_none_of_its_text(
    tmp_path: Path, config: bytes
) -> None:
    """The decrypted config.json is the lab's: a malformed one is refused with a fixed message,
    and the error carries no part of it (no chained JSONDecodeError holding the document)."""
    pytest.importorskip("torch")
    plain = tmp_path / "plain"
    plain.mkdir()
    for p in (VECTORS / "plain").iterdir():
        (plain / p.name).write_bytes(p.read_bytes())
    (plain / "config.json").write_bytes(config)
    seal_model(
        plain, tmp_path / "s", DEK, model_id=MODEL_ID, model_version=VERSION, rng=Rng(b"c"),
        threads=1,
    )  # fmt: skip
    with pytest.raises(SealedFormatError, match=r"config\.json is not JSON") as e:
        load_for_transformers(tmp_path / "s", DEK, model_id=MODEL_ID, model_version=VERSION)
    assert e.value.__cause__ is None and e.value.__context__ is None
    assert "secret_dim" not in str(e.value)


def test_vllm_weights_iterator_yields_every_tensor_once() -> None:
    pytest.importorskip("torch")
    names = [
        n
        for n, _ in weights_iterator(
            VECTORS / "sealed", DEK, model_id=MODEL_ID, model_version=VERSION
        )
    ]
    assert sorted(names) == ["embed.weight", "empty", "head.weight", "mask", "norm.bias"]


def test_numpy_refuses_a_device() -> None:
    with (
        SealedModel(VECTORS / "sealed", DEK, model_id=MODEL_ID, model_version=VERSION) as m,
        pytest.raises(ValueError, match="numpy"),
    ):
        m.safe_open(SHARD1, "np", "cuda")


#: A well-formed manifest digest, as ``lessee seal`` records it.
DIGEST = "sha256:" + "0f" * 32


def test_key_file_round_trip_and_permissions(tmp_path: Path) -> None:
    p = tmp_path / "k.json"
    write_key_file(p, DEK, key_id="kid", model_id="m", model_version=2, manifest_digest=DIGEST)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    k = read_key_file(p)
    assert bytes(k.dek) == DEK and k.model_version == 2 and k.key_id == "kid"
    assert k.model_id == "m" and k.manifest_digest == DIGEST
    with pytest.raises(FileExistsError):
        write_key_file(p, DEK, key_id="kid", model_id="m", model_version=2, manifest_digest=DIGEST)
    os.chmod(p, 0o644)
    with pytest.raises(InputError, match="group or others"):
        read_key_file(p)
    os.chmod(p, 0o600)
    p.write_text('{"format": "other"}')
    with pytest.raises(InputError):
        read_key_file(p)


def _raw_key_file(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


#: A field left out of the document altogether.
_MISSING = object()


def _key_doc(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "format": "lessee-sealed-weights-dek",
        "version": 1,
        "key_id": "lsw1-0123",
        "model_id": "acme/m",
        "model_version": 3,
        "manifest_digest": DIGEST,
        "dek": DEK.hex(),
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not _MISSING}


def _assert_no_dek(exc: BaseException) -> None:
    """Neither the message nor anything chained to it shows the key, as hex or as bytes."""
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen), repr(vars(seen)), repr(seen.args)):
            assert DEK.hex() not in text.lower() and repr(DEK)[2:-1] not in text
        seen = seen.__cause__ or seen.__context__


def test_key_file_repr_and_str_never_show_the_dek(tmp_path: Path) -> None:
    """A KeyFile logged with %s or shown in a traceback's locals must not print the key."""
    p = tmp_path / "k.json"
    write_key_file(p, DEK, key_id="kid", model_id="m", model_version=2, manifest_digest=DIGEST)
    k = read_key_file(p)
    for text in (repr(k), str(k), f"{k}", "%s %r" % (k, k)):  # noqa: UP031 (what logging does)
        assert DEK.hex() not in text and repr(bytes(DEK))[2:-1] not in text
        assert repr(bytearray(DEK)) not in text and "dek" not in text
        assert "kid" in text and "model_version=2" in text


_DEK_TEXT = DEK.hex().encode()


@pytest.mark.parametrize(
    "data",
    [
        b'{"format": "lessee-sealed-weights-dek", "dek": "' + _DEK_TEXT + b'",}',
        b'{"format": "lessee-sealed-weights-dek", "dek": "' + _DEK_TEXT + b'"',
        b'{"dek": "' + _DEK_TEXT + b'", "x": "\xff\xfe"}',
        b'{"dek": "' + _DEK_TEXT + b'", "dek": "' + _DEK_TEXT + b'"}',
        b"[" * 2000 + b'"' + _DEK_TEXT + b'"' + b"]" * 2000,
    ],
    ids=["trailing-comma", "unterminated", "not-utf8", "duplicate-key", "deep"],
)
def test_malformed_key_file_error_carries_no_file_text(tmp_path: Path, data: bytes) -> None:
    """JSONDecodeError.doc and UnicodeDecodeError.object are the whole file, DEK hex included:
    the InputError must neither chain them (__cause__) nor carry them as __context__."""
    p = _raw_key_file(tmp_path / "k.json", data)
    with pytest.raises(InputError, match="not a lessee key file") as info:
        read_key_file(p)
    assert info.value.__cause__ is None and info.value.__context__ is None
    _assert_no_dek(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_version", 3.9),
        ("model_version", 3.0),
        ("model_version", True),
        ("model_version", "7"),
        ("model_version", None),
        ("model_version", -1),
        ("model_version", 2**32),
        ("model_id", None),
        ("model_id", 5),
        ("model_id", ""),
        ("model_id", "a\x00b"),
        ("model_id", "m" * 257),
        ("key_id", None),
        ("key_id", ["k"]),
        ("key_id", "has space"),
        ("key_id", "k" * 129),
        ("manifest_digest", 5),
        ("manifest_digest", None),
        ("manifest_digest", "sha256:00"),
        ("manifest_digest", "0f" * 32),
        ("manifest_digest", "sha256:" + "0F" * 32),
        ("manifest_digest", "SHA256:" + "0f" * 32),
        ("manifest_digest", "sha256:" + "0f" * 32 + "\n"),
        ("dek", None),
        ("dek", 5),
        ("dek", " ".join([DEK.hex()[i : i + 2] for i in range(0, 64, 2)])),
        ("dek", DEK.hex().upper()),
        ("dek", DEK.hex()[:-2]),
        ("dek", DEK.hex() + "00"),
        ("dek", DEK.hex()[:-1] + "g"),
        ("key_id", _MISSING),
        ("model_id", _MISSING),
        ("model_version", _MISSING),
        ("manifest_digest", _MISSING),
        ("dek", _MISSING),
    ],
    ids=lambda v: "missing" if v is _MISSING else None,
)
def test_key_file_fields_are_checked_not_converted(
    tmp_path: Path, field: str, value: object
) -> None:
    """The recorded version becomes what ``lessee unseal`` expects: 3.9, true or "7" must not
    turn into a version, nor None into the model id 'None'."""
    p = _raw_key_file(tmp_path / "k.json", json.dumps(_key_doc(**{field: value})).encode())
    with pytest.raises(InputError, match=field) as info:
        read_key_file(p)
    assert info.value.__cause__ is None
    _assert_no_dek(info.value)


@pytest.mark.parametrize("version", [True, 1.0, "1", None])
def test_key_file_format_version_is_exact(tmp_path: Path, version: object) -> None:
    p = _raw_key_file(tmp_path / "k.json", json.dumps(_key_doc(version=version)).encode())
    with pytest.raises(InputError, match="format/version"):
        read_key_file(p)


def test_key_file_writer_refuses_what_the_reader_would(tmp_path: Path) -> None:
    """Checked before the file is created: no unreadable key file is left behind."""
    p = tmp_path / "k.json"
    for kw in (
        {"manifest_digest": "sha256:00"},
        {"model_version": True},
        {"model_id": ""},
        {"key_id": "has space"},
    ):
        args: dict[str, Any] = {
            "key_id": "kid", "model_id": "m", "model_version": 2, "manifest_digest": DIGEST, **kw
        }  # fmt: skip
        with pytest.raises(InputError, match=next(iter(kw))):
            write_key_file(p, DEK, **args)
        assert not p.exists()


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_key_file_that_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    """Checked on the open descriptor (no window to swap the file), and opened non-blocking:
    a FIFO given by mistake is refused, not waited on for a writer."""
    path = tmp_path / "key"
    if kind == "directory":
        path.mkdir(mode=0o700)
    else:
        os.mkfifo(path, 0o600)
    with pytest.raises(InputError, match="not a regular file"):
        read_key_file(path)


def _tamper_middle_chunk(path: Path) -> None:
    data = bytearray(path.read_bytes())
    h = int.from_bytes(data[12:16], "big")
    data[h + (CS + 16) + 100] ^= 1  # chunk 1: authenticated when read, not when opened
    path.write_bytes(bytes(data))


def _capture_written_buffers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The buffers plaintext passed through on its way to disk (``FileSink.write_at``'s)."""
    seen: list[Any] = []
    real = FileSink.write_at

    def spy(self: FileSink, offset: int, data: memoryview) -> None:
        seen.append(data.obj)
        real(self, offset, data)

    monkeypatch.setattr(FileSink, "write_at", spy)
    return seen


def test_unseal_to_removes_every_file_it_wrote_when_a_later_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files are listed config.json, empty.bin, shard 1, shard 2...: the ones before the
    tampered shard 2 were written (and used to stay, renamed into place) before it failed."""
    d = copy_sealed(tmp_path)
    _tamper_middle_chunk(d / f"{SHARD2}.sealed")
    out = tmp_path / "out"
    out.mkdir()
    seen = _capture_written_buffers(monkeypatch)
    with SealedModel(d, DEK, model_id=MODEL_ID, model_version=VERSION) as m:
        assert m.files.index(SHARD2) > m.files.index(SHARD1)
        with pytest.raises(DecryptionError):
            m.unseal_to(out)
    assert list(out.iterdir()) == []  # no plaintext file, no .partial
    assert seen and all(not any(buf) for buf in seen)  # the step buffer was wiped too
    with (
        SealedModel(d, DEK, model_id=MODEL_ID, model_version=VERSION) as m,
        pytest.raises(DecryptionError),
    ):
        m.unseal_to(tmp_path / "new" / "out")
    assert not (tmp_path / "new" / "out").exists()  # a directory it made goes too


def test_unseal_to_wipes_its_step_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture_written_buffers(monkeypatch)
    with SealedModel(VECTORS / "sealed", DEK, model_id=MODEL_ID, model_version=VERSION) as m:
        written = m.unseal_to(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(m.files)
    assert (tmp_path / "out" / SHARD1).read_bytes() == (VECTORS / "plain" / SHARD1).read_bytes()
    assert seen and all(isinstance(buf, bytearray) and not any(buf) for buf in seen)


@pytest.mark.parametrize("what", ["file", "non-empty directory"])
def test_unseal_to_refuses_an_out_that_is_not_new_or_empty(tmp_path: Path, what: str) -> None:
    out = tmp_path / "out"
    if what == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / SHARD1).write_text("mine")
    with (
        SealedModel(VECTORS / "sealed", DEK, model_id=MODEL_ID, model_version=VERSION) as m,
        pytest.raises(InputError, match="new or empty"),
    ):
        m.unseal_to(out)
    assert (out if what == "file" else out / SHARD1).read_text() == "mine"
    if what != "file":
        assert [p.name for p in out.iterdir()] == [SHARD1]


def test_a_single_shard_opens_only_under_the_name_it_was_sealed_as(tmp_path: Path) -> None:
    """Every shard of a model has the same key, model id and version: only the name in the
    header tells them apart. A blob path (no ``.sealed`` suffix) used to open any of them."""
    blob = tmp_path / "shard1.blob"  # a cache path, holding shard 2 where shard 1 is wanted
    blob.write_bytes((VECTORS / "sealed" / f"{SHARD2}.sealed").read_bytes())
    kw: dict[str, Any] = {"model_id": MODEL_ID, "model_version": VERSION}
    with pytest.raises(InputError, match="pass expected_name"):
        lnp.load_file(blob, DEK, **kw)
    with pytest.raises(InputError, match="pass expected_name"):
        lnp.safe_open(blob, DEK, **kw)
    with pytest.raises(BindingError) as exc:
        lnp.load_file(blob, DEK, expected_name=SHARD1, **kw)
    assert exc.value.reason == "shard_mismatch"
    with pytest.raises(BindingError):
        lnp.safe_open(blob, DEK, expected_name=SHARD1, **kw)
    assert sorted(lnp.load_file(blob, DEK, expected_name=SHARD2, **kw)) == ["head.weight", "mask"]
    with lnp.safe_open(blob, DEK, expected_name=SHARD2, **kw) as f:
        assert f.keys() == ["head.weight", "mask"]


def test_expected_name_must_agree_with_a_sealed_suffix(tmp_path: Path) -> None:
    path = VECTORS / "sealed" / f"{SHARD2}.sealed"
    kw: dict[str, Any] = {"model_id": MODEL_ID, "model_version": VERSION}
    with pytest.raises(InputError, match="contradicts the file name"):
        lnp.load_file(path, DEK, expected_name=SHARD1, **kw)
    with pytest.raises(InputError, match="must not be empty"):
        lnp.load_file(path, DEK, expected_name="", **kw)
    assert sorted(lnp.load_file(path, DEK, expected_name=SHARD2, **kw)) == ["head.weight", "mask"]
    assert sorted(lnp.load_file(path, DEK, **kw)) == ["head.weight", "mask"]  # suffix alone


def test_torch_single_shard_entry_points_take_expected_name(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from agent.loader import torch as lpt

    blob = tmp_path / "blob"
    blob.write_bytes((VECTORS / "sealed" / f"{SHARD2}.sealed").read_bytes())
    kw: dict[str, Any] = {"model_id": MODEL_ID, "model_version": VERSION}
    with pytest.raises(InputError, match="pass expected_name"):
        lpt.load_file(blob, DEK, **kw)
    with pytest.raises(BindingError):
        lpt.safe_open(blob, DEK, expected_name=SHARD1, **kw)
    assert sorted(lpt.load_file(blob, DEK, expected_name=SHARD2, **kw)) == ["head.weight", "mask"]


def test_seal_sets_the_mode_on_the_descriptor_never_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chmod by path after the rename follows a symlink planted at that path in a shared
    OUT_DIR (a real race): the mode must be 0644 before the file has its final name."""

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"chmod by path: {args}")

    at_rename: dict[str, int] = {}
    real_replace = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        at_rename[Path(dst).name] = stat.S_IMODE(os.lstat(src).st_mode)
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    seal_model(VECTORS / "plain", out, DEK, model_id=MODEL_ID, model_version=VERSION, rng=Rng(b"m"))
    sealed = sorted(p.name for p in out.iterdir())
    assert sorted(at_rename) == [n for n in sealed if n != "lessee-manifest.lsm"]
    assert set(at_rename.values()) == {0o644}
    for name in sealed:  # the manifest is created in place: its mode is set before close
        assert stat.S_IMODE(os.lstat(out / name).st_mode) == 0o644, name


def test_a_row_slice_lands_on_the_device_the_shard_was_opened_for() -> None:
    torch = pytest.importorskip("torch")
    with SealedModel(VECTORS / "sealed", DEK, model_id=MODEL_ID, model_version=VERSION) as m:
        with m.safe_open(SHARD1, "pt", "meta") as f:
            assert f.get_tensor("embed.weight").device.type == "meta"
            sl = f.get_slice("embed.weight")
            for key in (slice(0, 8), 3, (slice(2, 40, 5), slice(None, None, 2)), -1):
                part = sl[key]
                assert part.device.type == "meta", key
                assert part.shape == torch.empty(48, 32)[key].shape, key
        with m.safe_open(SHARD1, "pt", "cpu") as f:  # the values: same rows as get_tensor's
            whole = f.get_tensor("embed.weight")
            assert torch.equal(f.get_slice("embed.weight")[2:40:5, ::2], whole[2:40:5, ::2])
