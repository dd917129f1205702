"""``lessee cpu inspect|verify`` on SNP reports through the real entry point, exit codes included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import main
from tests.snp.helpers import GSG, VIRTEE, flip, gsg_report

AT = ["--at", "2026-11-28T00:00:00Z"]
GSG_ARGS = [
    str(GSG / "attestation.bin"),
    "--certs",
    str(GSG / "vcek.testcer"),
    "--certs",
    str(GSG / "ask_ark_milan.pem"),
]
VIRTEE_ARGS = [str(VIRTEE / "report_milan.hex"), "--certs", str(VIRTEE / "vcek_milan.der")]


def test_verify_clean_report_exits_0_only_when_revocation_is_skipped_on_purpose(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No AMD CRL: the default policy (missing_revocation: reject) rejects, as the README's
    # exit-code rule says ("1 ... a check could not be done") and as TDX without collateral.
    assert main(["cpu", "verify", *VIRTEE_ARGS, *AT]) == 1
    captured = capsys.readouterr()
    assert "verdict: rejected (revocation_not_checked)" in captured.out
    assert "verdict: OK" not in captured.out
    assert captured.err.startswith("lessee: rejected: revocation not checked")
    assert "--skip-revocation" in captured.err and captured.err.count("\n") == 1
    # The explicit choice: verified, and the output still says revocation was not checked.
    assert main(["cpu", "verify", *VIRTEE_ARGS, *AT, "--skip-revocation"]) == 0
    out = capsys.readouterr().out
    assert "verdict: OK" in out and "revocation NOT checked (--skip-revocation)" in out
    assert "revocation: not checked (--skip-revocation)" in out
    assert "chain: SEV-VCEK -> SEV-Milan -> ARK-Milan (pinned)" in out
    assert "reported_tcb: bootloader=3 tee=0 snp=8 microcode=115" in out
    assert "debug: no" in out


def test_verify_debug_report_exits_1_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpu", "verify", *GSG_ARGS, *AT, "--skip-revocation"]) == 1
    captured = capsys.readouterr()
    assert "verdict: rejected (debug_policy)" in captured.out
    assert "OK" not in captured.out
    assert "DEBUG policy set" in captured.err
    assert "signature and chain verified" in captured.err


def test_verify_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpu", "verify", *GSG_ARGS, *AT, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "rejected"
    assert doc["reasons"] == ["debug_policy", "revocation_not_checked"]
    assert doc["revocation_skipped"] is False
    assert doc["product"] == "Milan" and doc["signing_key"] == "vcek"
    assert doc["report"]["policy"]["debug"] is True
    assert doc["reported_tcb"]["snp"] == 5
    assert doc["chip_id_checked"] is True and doc["revocation_checked"] is False


def test_verify_report_data(capsys: pytest.CaptureFixture[str]) -> None:
    good = "0102030405" + "00" * 59
    assert main(["cpu", "verify", *GSG_ARGS, *AT, "--report-data", good, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["report_data_checked"] is True
    assert main(["cpu", "verify", *GSG_ARGS, *AT, "--report-data", "00" * 64]) == 1
    assert "REPORT_DATA does not equal" in capsys.readouterr().err
    assert main(["cpu", "verify", *GSG_ARGS, *AT, "--report-data", "zz"]) == 2
    assert main(["cpu", "verify", *GSG_ARGS, *AT, "--report-data", "00" * 32]) == 2


def test_verify_wrong_chain_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    args = [*VIRTEE_ARGS, "--certs", str(GSG / "ask_ark_genoa.pem"), *AT]
    assert main(["cpu", "verify", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lessee: rejected:") and "ARK-Genoa" in err
    assert err.count("\n") == 1


def test_verify_before_vcek_validity_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpu", "verify", *GSG_ARGS, "--at", "2022-01-01"]) == 1
    assert "not valid before" in capsys.readouterr().err


def test_verify_without_vcek_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpu", "verify", str(GSG / "attestation.bin"), *AT]) == 1
    assert "no VCEK certificate" in capsys.readouterr().err


def test_tampered_report_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "r.bin"
    bad.write_bytes(flip(gsg_report(), 0x90))
    args = [str(bad), *GSG_ARGS[1:], *AT]
    assert main(["cpu", "verify", *args]) == 1
    assert "does not verify" in capsys.readouterr().err


def test_malformed_report_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "r.bin"
    bad.write_bytes(flip(gsg_report(), 0x190))  # a reserved byte
    assert main(["cpu", "verify", str(bad), *GSG_ARGS[1:], *AT]) == 2
    err = capsys.readouterr().err
    assert "reserved [0x188..0x19f], offset 400" in err
    bad.write_bytes(gsg_report()[:1000])
    assert main(["cpu", "inspect", str(bad)]) == 2


def test_malformed_certificate_exits_2(tmp_path: Path) -> None:
    cert = tmp_path / "vcek.der"
    cert.write_bytes(b"\x30\x03\x02\x01\x00")
    assert main(["cpu", "verify", str(GSG / "attestation.bin"), "--certs", str(cert), *AT]) == 2


def test_skip_revocation_json_and_exclusions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cpu", "verify", *VIRTEE_ARGS, *AT, "--skip-revocation", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "verified" and doc["reasons"] == []
    assert doc["revocation_checked"] is False and doc["revocation_skipped"] is True
    # DEBUG is rejected whatever is skipped.
    assert main(["cpu", "verify", *GSG_ARGS, *AT, "--skip-revocation", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["reasons"] == ["debug_policy"]
    # A CRL and skipping it are two answers to one question: bad usage.
    crl = tmp_path / "crl.der"
    crl.write_bytes(b"not a crl")
    args = [*VIRTEE_ARGS, *AT, "--skip-revocation", "--collateral", str(crl)]
    assert main(["cpu", "verify", *args]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_crl_collateral_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crl = tmp_path / "crl.der"
    crl.write_bytes(b"not a crl")
    assert main(["cpu", "verify", *VIRTEE_ARGS, *AT, "--collateral", str(crl)]) == 2
    assert "malformed CRL" in capsys.readouterr().err


def test_inspect(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpu", "inspect", str(GSG / "attestation.bin")]) == 0
    out = capsys.readouterr().out
    assert "debug: YES" in out and "policy: 0xb0000 [SMT,DEBUG]" in out
    assert main(["cpu", "inspect", str(VIRTEE / "report_milan.hex"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["report"]["policy"]["debug"] is False
    assert doc["report"]["tcb"]["reported"] == "0300000000000873"  # v2: product not known yet


def test_a_v5_report_whose_guest_svn_is_0x81_is_still_snp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TDX quote's first bytes are version (u16), key type (u16, always 2) and TEE type
    (u32, 0x81); an SNP report's are VERSION (u32) and GUEST_SVN (u32, the guest owner's
    choice). With version and TEE type alone, a v5 report of GUEST_SVN 0x81 was read as a
    TDX quote and refused as malformed. (Detection precedes the signature: the edit is fine.)"""
    from agent.cli.cpu import detect_format

    raw = bytearray(gsg_report())
    raw[0:4] = (5).to_bytes(4, "little")
    raw[4:8] = (0x81).to_bytes(4, "little")
    assert detect_format(bytes(raw)) == "snp"
    p = tmp_path / "v5.bin"
    p.write_bytes(bytes(raw))
    assert main(["cpu", "inspect", str(p)]) == 0
    assert "SEV-SNP" in capsys.readouterr().out


def test_an_out_of_range_time_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    """In range where written, out of range in UTC: an InputError (exit 2), once an internal
    error (OverflowError, exit 1)."""
    for at in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"):
        assert main(["cpu", "verify", *VIRTEE_ARGS, "--at", at]) == 2
        assert "not an ISO-8601 time" in capsys.readouterr().err
