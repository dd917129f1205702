"""``lessee seal`` / ``lessee unseal`` / ``lessee sealed inspect`` through the real entry point."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.loader import numpy as lnp
from tests.sealing.helpers import MODEL_ID, VECTORS, VERSION, copy_sealed


def _seal(tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, dict[str, object]]:
    out, key = tmp / "out", tmp / "keys" / "dek.json"
    key.parent.mkdir()
    rc = main(
        [
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
            "--json",
            "--chunk-size",
            "4096",
        ]
    )
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
