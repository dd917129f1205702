"""``lessee cpu inspect|verify`` for Intel TDX quotes (called by ``agent.cli.cpu``).

``verify`` exits 0 only when every check of ``attest.tdx.verify`` passed *and* lessee's default
acceptance holds: TCB status ``UpToDate`` and the TD's DEBUG attribute clear (a debug TD lets
the host read its memory, so its measurements prove nothing). Anything else exits 1 with the
reasons printed; malformed input exits 2. Without ``--collateral`` only the signatures and the
PCK chain can be checked, which is not a verification: that exits 1 too.

A quote file followed by bytes is refused; when the dispatcher passes
``capture_buffer=True`` (a fixed-size buffer some guest tools write), zero padding is allowed.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from agent.bounded_read import read_bounded
from attest.errors import InputError
from attest.tdx.collateral import MAX_COLLATERAL_JSON_BYTES, parse_collateral_json
from attest.tdx.quote import TdxQuote, parse_quote
from attest.tdx.verify import (
    SignedTdxQuote,
    TcbStatus,
    VerifiedTdxQuote,
    verify_quote,
    verify_quote_signatures,
)
from attest.timeutil import parse_iso8601
from attest.x509chain import describe

EXIT_OK = 0
EXIT_REJECTED = 1
REPORT_DATA_SIZE = 64
#: Lessee's default: only this TCB status passes ``cpu verify`` (policy can say otherwise).
ACCEPTED_TCB_STATUSES = frozenset({TcbStatus.UP_TO_DATE})


def _parse(data: bytes, args: argparse.Namespace) -> TdxQuote:
    return parse_quote(
        data, allow_trailing_zero_padding=bool(getattr(args, "capture_buffer", False))
    )


def quote_facts(quote: TdxQuote) -> dict[str, Any]:
    """The quote's fields as JSON-friendly values (hex for bytes)."""
    b = quote.body
    facts: dict[str, Any] = {
        "format": "tdx",
        "version": quote.version,
        "body_type": quote.body_type,
        "tee_tcb_svn": b.tee_tcb_svn.hex(),
        "mr_seam": b.mr_seam.hex(),
        "mr_signer_seam": b.mr_signer_seam.hex(),
        "seam_attributes": b.seam_attributes.hex(),
        "td_attributes": b.td_attributes.hex(),
        "debug": b.debug,
        "td_attribute_flags": b.td_attribute_flags,
        "td_attributes_reserved_bits": list(b.td_attributes_reserved_bits),
        "xfam": b.xfam.hex(),
        "mr_td": b.mr_td.hex(),
        "mr_config_id": b.mr_config_id.hex(),
        "mr_owner": b.mr_owner.hex(),
        "mr_owner_config": b.mr_owner_config.hex(),
        "rtmr": [r.hex() for r in b.rtmrs],
        "report_data": b.report_data.hex(),
    }
    if b.tee_tcb_svn_2 is not None and b.mr_service_td is not None:
        facts["tee_tcb_svn_2"] = b.tee_tcb_svn_2.hex()
        facts["mr_service_td"] = b.mr_service_td.hex()
    qe = quote.signature_data.qe_report
    facts.update(
        {
            "qe_vendor_id": quote.header.qe_vendor_id.hex(),
            "user_data": quote.header.user_data.hex(),
            "qe_isv_prod_id": qe.isv_prod_id,
            "qe_isv_svn": qe.isv_svn,
            "qe_mr_signer": qe.mr_signer.hex(),
            "quote_bytes": len(quote.raw),
            "padding_bytes": quote.padding_length,
        }
    )
    return facts


def _print(facts: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(facts, indent=2, sort_keys=True))
        return
    for key, value in facts.items():
        if isinstance(value, list):
            for i, item in enumerate(value):
                print(f"{key}[{i}]: {item}")
        elif isinstance(value, dict):
            for sub, item in value.items():
                print(f"{key}.{sub}: {item}")
        else:
            print(f"{key}: {value}")


def run_inspect(data: bytes, args: argparse.Namespace) -> int:
    """Print the parsed quote (nothing is verified)."""
    _print(quote_facts(_parse(data, args)), bool(getattr(args, "json", False)))
    return EXIT_OK


def _time(args: argparse.Namespace) -> datetime:
    text = getattr(args, "at", None)
    return parse_iso8601(text) if text else datetime.now(UTC)


def _report_data(args: argparse.Namespace) -> bytes | None:
    text = getattr(args, "report_data", None)
    if not text:
        return None
    try:
        value = bytes.fromhex(text)
    except ValueError as exc:
        raise InputError("--report-data is not hex") from exc
    if len(value) != REPORT_DATA_SIZE:
        raise InputError(f"--report-data must be {REPORT_DATA_SIZE} bytes, got {len(value)}")
    return value


def _read_collateral(path: str) -> bytes:
    return read_bounded(path, MAX_COLLATERAL_JSON_BYTES, "collateral")


def _signed_facts(signed: SignedTdxQuote) -> dict[str, Any]:
    return {
        "pck_chain": [describe(c) for c in signed.pck_chain.certs],
        "fmspc": signed.pck.fmspc.hex(),
        "pce_id": signed.pck.pce_id.hex(),
        "pce_svn": signed.pck.pce_svn,
        "sgx_tcb_components": list(signed.pck.tcb_components),
    }


def acceptance_problems(verified: VerifiedTdxQuote) -> list[str]:
    """Lessee's default acceptance for ``cpu verify``: what keeps a verified quote out."""
    problems = []
    if verified.debug:
        problems.append("TD attribute DEBUG is set: the host can read this TD (refused)")
    if verified.tcb_status not in ACCEPTED_TCB_STATUSES:
        problems.append(f"TCB status is {verified.tcb_status.value}, not UpToDate")
    return problems


def run_verify(data: bytes, args: argparse.Namespace) -> int:
    """Verify the quote (and collateral when given) as of ``--at``; exit code per the contract."""
    if getattr(args, "skip_revocation", False):
        raise InputError(
            "--skip-revocation applies to SEV-SNP reports only: a TDX quote's collateral "
            "(--collateral) carries its TCB status and QE identity as well as its CRLs"
        )
    quote = _parse(data, args)
    at = _time(args)
    expected = _report_data(args)
    as_json = bool(getattr(args, "json", False))
    collateral_path = getattr(args, "collateral", None)
    facts = quote_facts(quote)
    facts["verified_at"] = at.isoformat()
    if not collateral_path:
        signed = verify_quote_signatures(quote, at=at)
        facts.update(_signed_facts(signed))
        problems = ["no --collateral: TCB status, QE identity and revocation were not checked"]
        if expected is not None and quote.body.report_data != expected:
            problems.append("REPORTDATA is not the expected value")
        facts.update({"verified": False, "problems": problems})
        _print(facts, as_json)
        return EXIT_REJECTED
    collateral = parse_collateral_json(_read_collateral(collateral_path))
    verified = verify_quote(quote, collateral, at=at, expected_report_data=expected)
    problems = acceptance_problems(verified)
    facts.update(
        {
            "pck_chain": [describe(c) for c in verified.pck_chain.certs],
            "fmspc": verified.fmspc.hex(),
            "pce_svn": verified.pck.pce_svn,
            "tcb_status": verified.tcb_status.value,
            "advisory_ids": list(verified.advisory_ids),
            "tcb_evaluation_data_number": verified.tcb_evaluation_data_number,
            "collateral_expiry": verified.collateral_expiry.isoformat(),
            "verified": not problems,
            "problems": problems,
        }
    )
    _print(facts, as_json)
    return EXIT_OK if not problems else EXIT_REJECTED
