"""``lessee seal`` / ``lessee unseal`` / ``lessee sealed inspect`` through the real entry point."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.loader import numpy as lnp
from agent.loader import seal_model
from agent.loader.keyfile import write_key_file
from sealing.weights import key_fingerprint
from tests.sealing.helpers import DEK, MODEL_ID, VECTORS, VERSION, Rng, copy_sealed


def _seal(tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, dict[str, object]]:
    out, key = tmp / "out", tmp / "keys" / "dek.json"
    key.parent.mkdir()
    rc = main(_seal_args(out, key, "--json"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "key broker" in cap.err  # the loud note
    return out, key, json.loads(cap.out)


def test_seal_then_unseal_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, key, summary = _seal(tmp_path, capsys)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    doc = json.loads(key.read_text())
    assert doc["manifest_digest"] == summary["manifest_digest"]
    assert len(bytes.fromhex(doc["dek"])) == 32
    assert not any("dek" in p.name for p in out.iterdir())
    assert bytes.fromhex(doc["dek"]).hex() not in "".join(
        p.read_bytes().hex() for p in out.iterdir()
    )
    rc = main(["unseal", str(out), "--key", str(key), "--out", str(tmp_path / "plain"), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0 and "PLAINTEXT" in cap.err
    for p in (VECTORS / "plain").iterdir():
        assert (tmp_path / "plain" / p.name).read_bytes() == p.read_bytes()
    sd = lnp.load_model(
        out,
        bytes.fromhex(doc["dek"]),
        model_id="acme/tiny",
        model_version=3,
        manifest_digest=str(summary["manifest_digest"]),
    )
    assert "head.weight" in sd


def test_seal_refuses_key_inside_output_and_existing_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "seal",
            str(VECTORS / "plain"),
            str(out),
            "--model-id",
            "m",
            "--model-version",
            "1",
            "--key-out",
            str(out / "k.json"),
            "--quiet",
        ]
    )
    assert rc == 2 and "must not be inside" in capsys.readouterr().err
    (tmp_path / "k.json").write_text("x")
    rc = main(
        [
            "seal",
            str(VECTORS / "plain"),
            str(out),
            "--model-id",
            "m",
            "--model-version",
            "1",
            "--key-out",
            str(tmp_path / "k.json"),
            "--quiet",
        ]
    )
    assert rc == 2 and "refusing to overwrite" in capsys.readouterr().err


def test_unseal_with_the_wrong_version_is_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, key, _ = _seal(tmp_path, capsys)
    rc = main(
        [
            "unseal",
            str(out),
            "--key",
            str(key),
            "--out",
            str(tmp_path / "p"),
            "--model-version",
            "2",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "expected 2" in err
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_inspect_shows_only_what_is_public(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["sealed", "inspect", str(VECTORS / "sealed"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["authenticated"] is False
    assert doc["model_id"] == MODEL_ID and doc["model_version"] == VERSION
    assert doc["problems"] == []
    text = json.dumps(doc)
    assert "head.weight" not in text and "embed" not in text  # tensor names stay encrypted
    d = copy_sealed(tmp_path)
    (d / "config.json.sealed").unlink()
    (d / "stray.sealed").write_bytes(b"x")
    rc = main(["sealed", "inspect", str(d)])
    out = capsys.readouterr().out
    assert rc == 1 and "file missing" in out and "stray.sealed" in out


def test_inspect_garbage_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lessee-manifest.lsm").write_bytes(b"not a manifest")
    assert main(["sealed", "inspect", str(tmp_path)]) == 2
    assert "not a lessee sealed manifest" in capsys.readouterr().err


@pytest.mark.parametrize("version", ["4294967296", "-1"])
def test_seal_refuses_a_version_key_release_cannot_carry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    """Key release binds the version as a u32: refuse before any key or file is made."""
    out, key = tmp_path / "out", tmp_path / "dek.json"
    rc = main(
        [
            "seal",
            str(VECTORS / "plain"),
            str(out),
            "--model-id",
            "m",
            "--model-version",
            version,
            "--key-out",
            str(key),
            "--quiet",
        ]
    )
    assert rc == 2 and "--model-version must be in 0..4294967295" in capsys.readouterr().err
    assert not key.exists() and not out.exists()


def test_inspect_reports_a_directory_in_place_of_a_sealed_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreadable entry (here a directory named X.sealed) is one problem line, not a crash."""
    d = copy_sealed(tmp_path)
    (d / "config.json.sealed").unlink()
    (d / "config.json.sealed").mkdir()
    rc = main(["sealed", "inspect", str(d), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert [p for p in doc["problems"] if p.startswith("config.json:")] == [
        "config.json: cannot read: Is a directory"
    ]


def _flip_a_middle_chunk(path: Path) -> None:
    """One ciphertext byte of chunk 1: authenticated only when that chunk is read, not at open."""
    data = bytearray(path.read_bytes())
    h = int.from_bytes(data[12:16], "big")
    data[h + (4096 + 16) + 100] ^= 1
    path.write_bytes(bytes(data))


def test_unseal_that_fails_leaves_no_plaintext_in_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.json and shard 1 come before shard 2: once written, they must go again when
    shard 2 fails, whether --out is new or an empty directory given by the operator."""
    out, key, _ = _seal(tmp_path, capsys)
    _flip_a_middle_chunk(out / "model-00002-of-00002.safetensors.sealed")
    given = tmp_path / "given"
    given.mkdir()
    for dst in (tmp_path / "new" / "plain", given):
        rc = main(["unseal", str(out), "--key", str(key), "--out", str(dst), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 1 and "failed authentication" in err
        assert f"no plaintext was left in {dst}" in err
        assert not dst.exists() or not any(dst.iterdir())
    assert given.is_dir()  # the operator's directory stays; one this call made goes
    assert not (tmp_path / "new" / "plain").exists()


@pytest.mark.parametrize("what", ["non-empty directory", "file"])
def test_unseal_refuses_an_out_that_is_not_new_or_an_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    out, key, _ = _seal(tmp_path, capsys)
    dst = tmp_path / "dst"
    if what == "file":
        dst.write_text("mine")
        victim = dst
    else:
        dst.mkdir()
        victim = dst / "config.json"
        victim.write_text("mine")
    rc = main(["unseal", str(out), "--key", str(key), "--out", str(dst), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "new or empty" in err
    assert "PLAINTEXT" not in err  # refused as bad usage before anything else
    assert victim.read_text() == "mine"
    if dst.is_dir():
        assert [p.name for p in dst.iterdir()] == ["config.json"]  # nothing added or mixed in


def _two_sealings_one_key(tmp: Path) -> tuple[Path, Path, str, str]:
    """The same model and version sealed twice under one data key; a key file for the first."""
    digests = []
    for name, seed in (("a", b"first"), ("b", b"second")):
        result = seal_model(
            VECTORS / "plain",
            tmp / name,
            DEK,
            model_id=MODEL_ID,
            model_version=VERSION,
            rng=Rng(seed),
            chunk_size=4096,
            threads=1,
        )
        digests.append(result.manifest_digest)
    key = tmp / "a.key.json"
    write_key_file(
        key,
        DEK,
        key_id=key_fingerprint(DEK),
        model_id=MODEL_ID,
        model_version=VERSION,
        manifest_digest=digests[0],
    )
    return tmp / "b", key, digests[0], digests[1]


def test_unseal_pins_the_manifest_digest_the_key_file_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key file is for one sealing: another sealing under the same key (a re-seal, or a
    directory swapped by the host) is refused before anything is decrypted or written."""
    other, key, _, _ = _two_sealings_one_key(tmp_path)
    dst = tmp_path / "plain"
    rc = main(["unseal", str(other), "--key", str(key), "--out", str(dst), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "is not the pinned" in err
    assert not dst.exists()
    rc = main(["unseal", str(tmp_path / "a"), "--key", str(key), "--out", str(dst), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert (dst / "config.json").read_bytes() == (VECTORS / "plain" / "config.json").read_bytes()


def test_unseal_manifest_digest_flag_must_equal_the_key_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other, key, digest_a, digest_b = _two_sealings_one_key(tmp_path)
    dst = tmp_path / "plain"
    argv = ["unseal", str(other), "--key", str(key), "--out", str(dst), "--quiet"]
    rc = main([*argv, "--manifest-digest", digest_b])  # names the directory given: still refused
    err = capsys.readouterr().err
    assert rc == 2 and "--manifest-digest differs from the digest the key file records" in err
    assert not dst.exists()
    argv[1] = str(tmp_path / "a")
    rc = main([*argv, "--manifest-digest", digest_a])  # repeating the key file's: fine
    assert rc == 0, capsys.readouterr().err


def _seal_args(out: Path, key: Path, *extra: str) -> list[str]:
    return [
        "seal",
        str(VECTORS / "plain"),
        str(out),
        "--model-id",
        "acme/tiny",
        "--model-version",
        "3",
        "--key-out",
        str(key),
        "--quiet",
        "--chunk-size",
        "4096",
        *extra,
    ]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lessee: error:"), err
    assert "internal error" not in err and "Traceback" not in err
    return lines[0]


def test_seal_a_symlink_loop_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    rc = main(["seal", str(loop), str(tmp_path / "out"), "--model-id", "m", "--model-version",
               "1", "--key-out", str(tmp_path / "k.json"), "--quiet"])  # fmt: skip
    assert rc == 2
    _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "k.json").exists()


@pytest.mark.parametrize("threads", ["-1", "0", "x", "100000"])
def test_seal_threads_out_of_range_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], threads: str
) -> None:
    rc = main(_seal_args(tmp_path / "out", tmp_path / "k.json", "--threads", threads))
    assert rc == 2
    assert "--threads" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "k.json").exists()


def test_seal_a_bad_key_out_is_refused_before_sealing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --key-out that cannot be written is refused (exit 2) before anything is sealed: no
    sealed directory whose only key was thrown away, no empty OUT_DIR."""
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(outside)
    for key in (tmp_path / "missing" / "k.json", dangling):
        rc = main(_seal_args(out, key))
        assert rc == 2
        _one_error_line(capsys.readouterr().err)
        assert not out.exists()
    assert not outside.exists() and dangling.is_symlink()
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    "extra", [["--chunk-size", "1000"], ["--model-id", "bad\nid"], ["--chunk-size", "-1"]]
)
def test_seal_bad_input_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    out, key = tmp_path / "out", tmp_path / "k.json"
    rc = main(_seal_args(out, key, *extra))
    assert rc == 2
    _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_seal_failure_removes_the_reserved_key_and_the_out_dir_it_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.cli.seal as seal_cli

    def broken(*args: object, **kwargs: object) -> None:
        Path(str(args[1])).mkdir(parents=True, exist_ok=True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(seal_cli, "seal_model", broken)
    out, key = tmp_path / "out", tmp_path / "k.json"
    assert main(_seal_args(out, key)) == 2
    _one_error_line(capsys.readouterr().err)
    assert not out.exists() and not key.exists()
    out.mkdir()  # an OUT_DIR the user made is left (empty) in place
    assert main(_seal_args(out, key)) == 2
    capsys.readouterr()
    assert out.is_dir() and not key.exists()


def test_seal_writes_the_key_into_the_reserved_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, key = tmp_path / "out", tmp_path / "k.json"
    assert main(_seal_args(out, key, "--threads", "2")) == 0
    capsys.readouterr()
    assert stat.S_IMODE(os.lstat(key).st_mode) == 0o600 and not key.is_symlink()
    assert json.loads(key.read_text())["model_id"] == "acme/tiny"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json", "out"]
