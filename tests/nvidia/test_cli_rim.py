"""``lessee rim verify``: exit codes, output, revocation modes (no network: loopback only)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from agent.cli.main import main
from attest.nvidia.rim import parse_rim
from tests.conftest import RIM_ERA
from tests.nvidia.test_rim import DRIVER, VBIOS, flip_hash_digit


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["rim", "verify", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_skip_in_the_rim_era_is_a_loud_warning_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, str(DRIVER), "--at", "2024-06-01", "--revocation", "skip", "--json"
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["status"] == "warning" and doc["reason"] == "revocation_skipped"
    assert doc["rim"]["version"] == "545.00" and doc["rim"]["kind"] == "driver"
    assert [m["index"] for m in doc["rim"]["active_measurements"]] == [7, *range(21, 41)]
    assert doc["rim"]["active_measurements"][0]["alternatives"][0].startswith("0e0ee161")
    assert [c["subject"] for c in doc["chain"]["certificates"]] == [
        "HCC RIM L4 Signer",
        "NVIDIA Reference Value L3 GH100 001",
        "NVIDIA Reference Value GH100 CA",
    ]
    assert doc["chain"]["root"]["subject"] == "NVIDIA CoRIM signing Root CA"
    assert [c["status"] for c in doc["revocation"]["checks"]] == ["skipped"] * 3
    assert "WARNING" in err and "NOT checked" in err


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(VBIOS), "--at", "2024-06-01T12:00:00Z", "--revocation", "skip")
    assert code == 0
    assert out.startswith("RIM GH100 96.00.5E.00.01 (vbios)")
    assert "active measurements: 12 of 64" in out
    assert "signer chain  HCC RIM L4 Signer <- NVIDIA Reference Value L3 GH100 001" in out
    assert out.rstrip().endswith("status: warning (revocation_skipped)")


def test_today_the_chain_is_expired_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, str(DRIVER), "--at", "2026-11-28", "--revocation", "skip", "--json"
    )
    assert code == 1
    doc = json.loads(out)
    assert doc["status"] == "rejected" and doc["reason"] == "rim_chain_expired"
    assert "rejected" in err and "expired" in err
    assert len(err.strip().splitlines()) == 1


def test_tampered_rim_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.swidtag"
    bad.write_bytes(flip_hash_digit(DRIVER.read_bytes(), 21))
    code, out, _ = run(capsys, str(bad), "--at", "2024-06-01", "--revocation", "skip", "--json")
    assert code == 1
    assert json.loads(out)["reason"] == "rim_signature"


def test_malformed_rim_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.swidtag"
    bad.write_bytes(b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>')
    code, out, err = run(capsys, str(bad), "--revocation", "skip")
    assert code == 2
    assert out == "" and "DOCTYPE" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["--revocation", "skip", "--ocsp", "x.der"],
        ["--revocation", "stapled"],
        ["--at", "yesterday", "--revocation", "skip"],
        ["--revocation", "maybe"],
        ["--ocsp-timeout", "0"],
        ["--ocsp-url", "http://ocsp.example/"],
    ],
)
def test_bad_usage_exit_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, _, _ = run(capsys, str(DRIVER), *args)
    assert code == 2


def test_missing_file_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, str(tmp_path / "nope.swidtag"), "--revocation", "skip")
    assert code == 2 and "nope.swidtag" in err


def test_online_revocation_unreachable_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, str(DRIVER), "--at", "2024-06-01", "--ocsp-url", "http://127.0.0.1:9/", "--json"
    )
    assert code == 1
    doc = json.loads(out)
    assert doc["revocation"]["mode"] == "online"
    assert doc["reason"] == "rim_revocation_missing"
    assert all(c["status"] == "missing" for c in doc["revocation"]["checks"])
    assert "revocation" in err


def _forged_ocsp(tmp_path: Path) -> Path:
    """A well-formed OCSP response for the signer, signed by a key that is not NVIDIA's."""
    rim = parse_rim(DRIVER.read_bytes())
    signer, issuer = rim.signer_chain[0], rim.signer_chain[1]
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Not NVIDIA OCSP")])
    responder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(RIM_ERA - timedelta(days=1))
        .not_valid_after(RIM_ERA + timedelta(days=1))
        .sign(key, hashes.SHA384())
    )
    resp = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=signer,
            issuer=issuer,
            algorithm=hashes.SHA384(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=RIM_ERA - timedelta(hours=1),
            next_update=RIM_ERA + timedelta(hours=12),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, responder)
        .certificates([responder])
        .sign(key, hashes.SHA384())
    )
    path = tmp_path / "signer.ocsp.der"
    path.write_bytes(resp.public_bytes(serialization.Encoding.DER))
    return path


def test_stapled_forged_ocsp_is_rejected(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    der = _forged_ocsp(tmp_path)
    code, out, _ = run(capsys, str(DRIVER), "--at", "2024-06-01", "--ocsp", str(der), "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["revocation"]["mode"] == "stapled"
    statuses = [c["status"] for c in doc["revocation"]["checks"]]
    assert statuses[0] == "invalid"  # the signer's response: wrong responder
    assert statuses[1:] == ["missing", "missing"]  # nothing stapled for the two CAs
    assert doc["status"] == "rejected" and doc["reason"] == "rim_revocation_invalid"


def test_stapled_garbage_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.der"
    junk.write_bytes(b"\x30\x03\x0a\x01\x00junk")
    code, _, _ = run(capsys, str(DRIVER), "--at", "2024-06-01", "--ocsp", str(junk))
    assert code == 2
