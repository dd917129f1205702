"""``lessee gpu inspect|verify``: exit codes, one-line errors, JSON, light imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli.main import main
from tests.conftest import LEGACY_NONCE, NVIDIA

ROOT = Path(__file__).resolve().parents[2]
LEGACY = [
    str(NVIDIA / "hopper_legacy/attestationReport.txt"),
    "--certs",
    str(NVIDIA / "hopper_legacy/gpuAkCertChain.txt"),
]
RIMS = ["--rim", str(NVIDIA / "rims/test_no_gpu")]
ERA = ["--at", "2024-06-01T00:00:00Z"]
PPCIE_NONCE = "4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e"


def test_verify_legacy_passes_with_loud_skip_warning(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["gpu", "verify", *LEGACY, "--nonce", LEGACY_NONCE, *RIMS, *ERA, "--revocation", "skip"]
    )
    out, err = capsys.readouterr()
    assert rc == 0
    assert "gpu0 (HOPPER): warning" in out and "measres: success" in out
    assert "WARNING: certificate revocation was NOT checked" in err


def test_verify_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "gpu",
            "verify",
            *LEGACY,
            "--nonce",
            LEGACY_NONCE,
            *RIMS,
            *ERA,
            "--revocation",
            "skip",
            "--json",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert doc["status"] == "warning"
    assert doc["devices"][0]["claims"]["x-nvidia-gpu-attestation-report-signature-verified"] is True
    assert doc["devices"][0]["failures"] == []


def test_verify_today_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "gpu",
            "verify",
            *LEGACY,
            "--nonce",
            LEGACY_NONCE,
            *RIMS,
            "--at",
            "2026-11-28",
            "--revocation",
            "skip",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1
    assert "expired" in out
    assert err.count("lessee: rejected:") == 1 and "rim-cert-chain" in err


def test_verify_wrong_nonce_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["gpu", "verify", *LEGACY, "--nonce", "00" * 32, *RIMS, *ERA, "--revocation", "skip"])
    assert rc == 1
    assert "nonce-match" in capsys.readouterr().err


def test_verify_without_nonce_is_not_a_pass(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["gpu", "verify", *LEGACY, *RIMS, *ERA, "--revocation", "skip"])
    assert rc == 1
    assert "no --nonce" in capsys.readouterr().err


def test_verify_stapled_without_files_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["gpu", "verify", *LEGACY, *RIMS, *ERA, "--revocation", "stapled"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("lessee: error:") and "--ocsp" in err


def test_verify_ppcie_two_files(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "gpu",
            "verify",
            str(NVIDIA / "ppcie/gpu_evidence.json"),
            str(NVIDIA / "ppcie/switch_evidence.json"),
            "--nonce",
            PPCIE_NONCE,
            *RIMS,
            "--revocation",
            "skip",
            "--json",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1  # no RIMs for this set are shipped
    assert len(doc["devices"]) == 12 and doc["topology"]["ok"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gpu", "verify", "/nonexistent/report"], "No such file"),
        (["gpu", "verify", str(NVIDIA / "hopper_legacy/attestationReport.txt")], "--certs"),
        ([*["gpu", "verify"], *LEGACY, "--nonce", "xyz"], "--nonce"),
        ([*["gpu", "verify"], *LEGACY, "--at", "yesterday"], "ISO-8601"),
        (
            [
                "gpu",
                "inspect",
                str(NVIDIA / "roots/verifier_device_root.pem"),
                "--certs",
                LEGACY[2],
            ],
            "SPDMVersion",
        ),
        (
            ["gpu", "verify", str(NVIDIA / "ppcie/gpu_evidence.json"), "--certs", LEGACY[2]],
            "--certs",
        ),
    ],
)
def test_bad_input_exit_2_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("lessee: error:") and message in err
    assert "Traceback" not in err


def test_bad_usage_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpu", "verify", *LEGACY, "--revocation", "maybe"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_inspect_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["gpu", "inspect", *LEGACY, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert doc["request"]["nonce"] == LEGACY_NONCE
    assert doc["request"]["header"]["param2"] == "0xff"
    assert doc["response"]["header"]["number_of_blocks"] == 64
    assert set(doc["measurements"]) == {str(i) for i in range(1, 65)}
    assert doc["opaque"]["DRIVER_VERSION"] == "545.00"
    assert doc["opaque"]["VBIOS_VERSION"] == "96.00.5e.00.01"
    assert len(doc["signature"]) == 192


def test_inspect_json_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpu", "inspect", str(NVIDIA / "ppcie/switch_evidence.json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["kind"] for d in doc] == ["switch"] * 4
    assert doc[0]["opaque"]["DEVICE_PDI"] == "666e93e19dec7d2d"


def test_subprocess_exit_code_time_and_light_imports() -> None:
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['lessee', *sys.argv[1:]]\n"
        "from agent.cli.main import main\n"
        "rc = main()\n"
        "heavy = sorted(m for m in ('grpc', 'numpy', 'torch', 'google.protobuf') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    argv = ["gpu", "verify", *LEGACY, "--nonce", LEGACY_NONCE, *RIMS, *ERA, "--revocation", "skip"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 3.0  # well under 1 s on an idle machine; slack for the shared CI box


def test_subprocess_rejected_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli.main",
            "gpu",
            "verify",
            *LEGACY,
            "--nonce",
            "11" * 32,
            *RIMS,
            *ERA,
            "--revocation",
            "skip",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lessee: rejected:")]
    assert len(lines) == 1 and "nonce" in lines[0]


def test_online_revocation_flags_reach_the_fetcher(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--ocsp-url``, ``--ocsp-timeout`` and ``--ocsp-cache`` (shared with ``rim verify``):
    an unreachable loopback responder leaves every chain's OCSP status missing: rejected."""
    argv = ["gpu", "verify", *LEGACY, "--nonce", LEGACY_NONCE, *RIMS, *ERA, "--json"]
    argv += ["--ocsp-url", "http://127.0.0.1:9/", "--ocsp-timeout", "2"]
    argv += ["--ocsp-cache", str(tmp_path / "ocsp")]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 1
    failures = json.loads(out)["devices"][0]["failures"]
    assert len(failures) == 9  # 3 certificates in each of the device, driver RIM, VBIOS RIM chains
    assert all(f["actual"] == "missing" for f in failures)
    assert all("http://127.0.0.1:9/ unreachable" in f["detail"] for f in failures)
    assert "lessee: rejected:" in err


@pytest.mark.parametrize(
    "flags",
    [
        ["--ocsp-url", "http://ocsp.example/"],  # plain http only for a loopback test responder
        ["--ocsp-timeout", "0"],
        ["--revocation", "skip", "--ocsp", "x.der"],
        ["--revocation", "online", "--ocsp", "x.der"],
    ],
)
def test_revocation_flag_contradictions_exit_2(
    capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    assert main(["gpu", "verify", *LEGACY, *RIMS, *ERA, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lessee: error:") and err.count("\n") == 1
