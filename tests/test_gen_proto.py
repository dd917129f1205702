"""``scripts/gen_proto.sh --check`` (run by ``make lint`` and CI) judges the generated code only."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _copy(tmp: Path) -> Path:
    root = tmp / "repo"
    shutil.copytree(REPO / "proto", root / "proto")
    shutil.copytree(
        REPO / "agent" / "rpc" / "v1",
        root / "agent" / "rpc" / "v1",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (root / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "gen_proto.sh", root / "scripts" / "gen_proto.sh")
    return root


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "scripts" / "gen_proto.sh"), "--check"],
        env={"PY": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_check_ignores_bytecode_caches_and_catches_edits(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    root = _copy(tmp_path)
    out = root / "agent" / "rpc" / "v1"
    # Importing the package (any test run, make test) leaves this behind; it is not drift.
    (out / "__pycache__").mkdir()
    (out / "__pycache__" / "broker_pb2.cpython-311.pyc").write_bytes(b"\0")
    done = _check(root)
    assert done.returncode == 0, done.stderr
    with (out / "log_pb2.pyi").open("a") as f:
        f.write("# edited by hand\n")
    done = _check(root)
    assert done.returncode == 1
    assert "stale" in done.stderr
