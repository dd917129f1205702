"""Intel TDX evidence: parse quotes (``quote``), parse collateral (``collateral``), verify both
(``verify``). Appraisal against a policy lives elsewhere; this package hands it typed facts
(MRTD, RTMRs, MRSEAM, TD attributes incl. DEBUG, XFAM, REPORTDATA, TCB status, advisory ids).
"""

from __future__ import annotations

from attest.tdx.collateral import (
    CollateralParseError,
    QeIdentity,
    TcbInfo,
    TdxCollateral,
    collateral_from_pcs,
    parse_collateral_json,
    parse_qe_identity_response,
    parse_tcb_info_response,
)
from attest.tdx.quote import TdReport, TdxQuote, TdxQuoteParseError, parse_quote
from attest.tdx.verify import (
    PckExtensions,
    SignedTdxQuote,
    TcbEvaluation,
    TcbStatus,
    VerifiedCollateral,
    VerifiedTdxQuote,
    evaluate_tcb,
    intel_sgx_root,
    verify_collateral,
    verify_quote,
    verify_quote_signatures,
)

__all__ = [
    "CollateralParseError",
    "PckExtensions",
    "QeIdentity",
    "SignedTdxQuote",
    "TcbEvaluation",
    "TcbInfo",
    "TcbStatus",
    "TdReport",
    "TdxCollateral",
    "TdxQuote",
    "TdxQuoteParseError",
    "VerifiedCollateral",
    "VerifiedTdxQuote",
    "collateral_from_pcs",
    "evaluate_tcb",
    "intel_sgx_root",
    "parse_collateral_json",
    "parse_qe_identity_response",
    "parse_quote",
    "parse_tcb_info_response",
    "verify_collateral",
    "verify_quote",
    "verify_quote_signatures",
]
