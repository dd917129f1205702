"""``lessee cpu inspect|verify`` on TDX quotes through ``agent.cli.main.main``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from agent.cli.cpu_tdx import acceptance_problems
from agent.cli.main import main
from attest.tdx.verify import verify_quote
from tests.tdx import helpers as h

DCAP_AT = "2025-06-19T11:16:03Z"
COLLATERAL = str(h.DCAP / "tdx_quote_collateral.json")


@pytest.fixture
def quote_file(tmp_path: Path) -> Path:
    """dcap-qvl's quote without its 70 bytes of capture padding."""
    p = tmp_path / "quote.bin"
    p.write_bytes(h.dcap_quote_bytes())
    return p


def test_inspect_json(quote_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpu", "inspect", str(quote_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "tdx" and out["version"] == 4 and out["debug"] is False
    assert out["mr_td"].startswith("91eb2b44") and len(out["rtmr"]) == 4
    assert out["td_attributes"] == "0000001000000000"
    assert out["td_attribute_flags"] == {
        "debug": False,
        "sept_ve_disable": True,
        "migratable": False,
        "pks": False,
        "kl": False,
        "perfmon": False,
    }
    assert out["td_attributes_reserved_bits"] == []


def test_inspect_text_v5(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpu", "inspect", str(h.GTG / "quote_v5_sample.dat")]) == 0
    out = capsys.readouterr().out
    assert "body_type: 3" in out and "mr_service_td: " in out and "rtmr[3]: " in out
    assert "td_attribute_flags.sept_ve_disable: True\n" in out
    assert "td_attribute_flags.migratable: False\n" in out


def test_verify_up_to_date(quote_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["cpu", "verify", str(quote_file), "--collateral", COLLATERAL, "--at", DCAP_AT, "--json"]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    assert out["tcb_status"] == "UpToDate" and out["verified"] is True
    assert out["collateral_expiry"] == "2025-07-19T10:00:35+00:00"
    assert out["pck_chain"] == [
        "Intel SGX PCK Certificate",
        "Intel SGX PCK Platform CA",
        "Intel SGX Root CA",
    ]


def test_verify_report_data(quote_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd = h.dcap_quote().body.report_data.hex()
    args = ["cpu", "verify", str(quote_file), "--collateral", COLLATERAL, "--at", DCAP_AT]
    assert main([*args, "--report-data", rd]) == 0
    assert main([*args, "--report-data", "00" * 64]) == 1
    assert "REPORTDATA" in capsys.readouterr().err
    assert main([*args, "--report-data", "00" * 63]) == 2
    assert main([*args, "--report-data", "xyz"]) == 2


def test_verify_outdated_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["cpu", "verify", str(h.DCAP / "tdx_quote_outdated"), "--collateral",
         str(h.DCAP / "tdx_quote_outdated_collateral.json"), "--at", "2026-02-18T11:58:51Z", "--json"]
    )  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert out["tcb_status"] == "NoMatchingTcbLevel" and out["verified"] is False


def test_verify_expired_collateral_exits_1(
    quote_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["cpu", "verify", str(quote_file), "--collateral", COLLATERAL, "--at", "2026-11-28"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("lessee: rejected:") and "expired" in err and "Traceback" not in err


def test_verify_without_collateral_is_not_a_verification(
    quote_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cpu", "verify", str(quote_file), "--at", DCAP_AT, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["verified"] is False and out["fmspc"] == "b0c06f000000"
    # SNP's --skip-revocation has no TDX meaning: the collateral is also the TCB status.
    args = ["cpu", "verify", str(quote_file), "--at", DCAP_AT, "--skip-revocation"]
    assert main(args) == 2
    assert "SEV-SNP reports only" in capsys.readouterr().err


def test_padded_buffer_and_garbage_are_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "cpu",
                "verify",
                str(h.DCAP / "tdx_quote"),
                "--collateral",
                COLLATERAL,
                "--at",
                DCAP_AT,
            ]
        )
        == 2
    )
    assert "trailing data" in capsys.readouterr().err
    bad = tmp_path / "bad.bin"
    bad.write_bytes(h.dcap_quote_bytes()[:700])
    assert main(["cpu", "inspect", str(bad)]) == 2
    col = tmp_path / "col.json"
    col.write_text("{}")
    assert (
        main(["cpu", "verify", str(h.DCAP / "tdx_quote_outdated"), "--collateral", str(col)]) == 2
    )


def test_tampered_quote_exits_1(tmp_path: Path) -> None:
    data = bytearray(h.dcap_quote_bytes())
    data[48 + 120] ^= 1  # set TD_ATTRIBUTES.DEBUG: the signature no longer verifies
    p = tmp_path / "debug.bin"
    p.write_bytes(bytes(data))
    assert main(["cpu", "verify", str(p), "--collateral", COLLATERAL, "--at", DCAP_AT]) == 1


def test_debug_td_is_refused_by_default() -> None:
    """No real debug-TD quote exists in the vectors; a verified quote with DEBUG set (edited
    after verification, which only this test can do) must still be refused by the CLI rule."""
    v = verify_quote(h.dcap_quote(), h.dcap_collateral(), at=h.DCAP_AT)
    assert acceptance_problems(v) == []
    body = replace(
        v.quote.body,
        td_attributes=bytes([v.quote.body.td_attributes[0] | 1]) + v.quote.body.td_attributes[1:],
    )
    debug = replace(v, quote=replace(v.quote, body=body))
    problems = acceptance_problems(debug)
    assert len(problems) == 1 and "DEBUG" in problems[0]
