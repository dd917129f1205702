"""``lessee cpu inspect|verify`` for AMD SEV-SNP reports (called by ``agent.cli.cpu``).

``inspect`` parses and prints; it judges nothing (exit 0 for any well-formed report).

``verify`` runs every check of ``attest.snp.verify`` as of ``--at`` and then applies lessee's
*default policy bits*, because a plain "OK" on a VM whose memory the host may read would be a
lie: a report with the DEBUG policy bit set exits 1 ("signature and chain verified; DEBUG policy
set - the default policy rejects this VM"), even though every cryptographic check passed. All
other policy (measurements, minimum TCB, VMPL, SMT, migration agent) is appraisal's job
(``lessee appraise --policy``); the facts are printed for it.

Inputs: ``--certs`` (repeatable) takes the VCEK/VLEK (DER or PEM) and optionally the ASK/ASVK and
ARK (PEM, AMD's ``cert_chain``); a missing ASK/ARK comes from lessee's pinned package data.
``--collateral`` takes AMD's CRL for the product (DER or PEM, from KDS ``.../crl``). Without it
revocation cannot be checked, and the default policy rejects evidence whose revocation was not
checked (``missing_revocation: reject``): the verdict is ``rejected (revocation_not_checked)``,
exit 1, as ``lessee cpu verify`` on a TDX quote without its collateral. ``--skip-revocation`` is
the explicit choice to verify without the CRL (offline, say): the output still says revocation
was not checked, and the exit code is then decided by the other checks. ``--report-data`` is the
expected 64-byte REPORT_DATA in hex.

Exit codes: 0 verified and the default policy accepts; 1 a check failed, DEBUG is set, or no CRL
was given without ``--skip-revocation``; 2 malformed input.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from cryptography import x509

from agent.bounded_read import read_bounded
from attest.errors import InputError
from attest.snp.report import TCB_NAMES, AttestationReport, Product, parse_report
from attest.snp.verify import (
    MAX_AMD_CERT_INPUT_BYTES,
    MAX_CRL_BYTES,
    VerifiedSnpReport,
    load_amd_certificates,
    verify_snp_report,
)
from attest.timeutil import parse_iso8601
from attest.x509chain import describe

REPORT_DATA_BYTES = 64
DEBUG_VERDICT = (
    "signature and chain verified; DEBUG policy set - the default policy rejects this VM"
)
NO_CRL_VERDICT = (
    "revocation not checked: no AMD CRL given (--collateral FILE), and the default policy "
    "rejects evidence whose revocation was not checked; --skip-revocation to verify without it"
)
#: What each reason of ``_verdict`` says on stderr.
_REASON_TEXT = {"debug_policy": DEBUG_VERDICT, "revocation_not_checked": NO_CRL_VERDICT}


def _flags(report: AttestationReport) -> str:
    pol = report.policy
    names = [
        ("SMT", pol.smt),
        ("MIGRATE_MA", pol.migrate_ma),
        ("DEBUG", pol.debug),
        ("SINGLE_SOCKET", pol.single_socket),
        ("CXL_ALLOW", pol.cxl_allow),
        ("MEM_AES_256_XTS", pol.mem_aes_256_xts),
        ("RAPL_DIS", pol.rapl_dis),
        ("CIPHERTEXT_HIDING", pol.ciphertext_hiding),
        ("PAGE_SWAP_DISABLE", pol.page_swap_disable),
    ]
    return ",".join(n for n, on in names if on) or "-"


def _text_lines(report: AttestationReport, product: Product | None) -> list[str]:
    pi = report.platform_info
    plat = [
        n
        for n, on in (
            ("SMT_EN", pi.smt_enabled),
            ("TSME_EN", pi.tsme_enabled),
            ("ECC_EN", pi.ecc_enabled),
            ("RAPL_DIS", pi.rapl_disabled),
            ("CIPHERTEXT_HIDING_EN", pi.ciphertext_hiding_enabled),
            ("ALIAS_CHECK_COMPLETE", pi.alias_check_complete),
            ("TIO_EN", pi.tio_enabled),
        )
        if on
    ]
    if pi.unknown_bits:
        plat.append(f"UNKNOWN(0x{pi.unknown_bits:x})")
    lines = [
        f"format: AMD SEV-SNP attestation report v{report.version}",
        f"product: {product.value if product else 'unknown (from the report alone)'}",
        f"policy: 0x{report.policy.raw:x} [{_flags(report)}] abi>={report.policy.abi_major}."
        f"{report.policy.abi_minor}",
        f"debug: {'YES - the host can read this VM' if report.policy.debug else 'no'}",
        f"vmpl: {report.vmpl}",
        f"guest_svn: {report.guest_svn}",
        f"signing_key: {report.signing_key.value}",
        f"platform_info: 0x{pi.raw:x} [{','.join(plat) or '-'}]",
        f"measurement: {report.measurement.hex()}",
        f"report_data: {report.report_data.hex()}",
        f"host_data: {report.host_data.hex()}",
        f"family_id: {report.family_id.hex()}",
        f"image_id: {report.image_id.hex()}",
        f"id_key_digest: {report.id_key_digest.hex()}",
        f"author_key_digest: {report.author_key_digest.hex()}",
        f"report_id: {report.report_id.hex()}",
        f"chip_id: {report.chip_id.hex()}",
        f"firmware: current {report.current_version}, committed {report.committed_version}",
    ]
    for name in TCB_NAMES:
        if product is None:
            raw = getattr(report, f"{name}_tcb_raw")
            lines.append(
                f"{name}_tcb: {raw.hex()} (layout unknown until the VCEK names the product)"
            )
            continue
        tcb = report.tcb(name, product)
        parts = f"bootloader={tcb.bootloader} tee={tcb.tee} snp={tcb.snp} microcode={tcb.microcode}"
        lines.append(f"{name}_tcb: {parts}" + ("" if tcb.fmc is None else f" fmc={tcb.fmc}"))
    if report.cpuid is not None:
        c = report.cpuid
        lines.append(f"cpuid: family 0x{c.family:x} model 0x{c.model:x} stepping {c.stepping}")
    if report.launch_mit_vector is not None:
        lines.append(
            f"mitigation_vectors: launch 0x{report.launch_mit_vector:x} "
            f"current 0x{report.current_mit_vector or 0:x}"
        )
    return lines


def run_inspect(data: bytes, args: argparse.Namespace) -> int:
    """Parse and print; judge nothing."""
    report = parse_report(data)
    product = report.cpuid_product
    if getattr(args, "json", False):
        print(json.dumps({"format": "sev-snp", "report": report.as_dict(product)}, indent=2))
    else:
        print("\n".join(_text_lines(report, product)))
    return 0


def _expected_report_data(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        value = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise InputError(f"--report-data is not hex: {exc}") from exc
    if len(value) != REPORT_DATA_BYTES:
        raise InputError(f"--report-data must be {REPORT_DATA_BYTES} bytes, got {len(value)}")
    return value


def _verdict(verified: VerifiedSnpReport, *, skip_revocation: bool) -> list[str]:
    """lessee's default policy bits, applied without a policy document: no DEBUG, and
    revocation checked (``missing_revocation: reject``) unless the caller chose to skip it."""
    reasons = ["debug_policy"] if verified.report.policy.debug else []
    if not verified.revocation_checked and not skip_revocation:
        reasons.append("revocation_not_checked")
    return reasons


def run_verify(data: bytes, args: argparse.Namespace) -> int:
    """Verify, print the facts, and exit per the contract (see the module docstring)."""
    at = parse_iso8601(args.at) if getattr(args, "at", None) else datetime.now(UTC)
    certs: list[x509.Certificate] = []
    for path in getattr(args, "certs", None) or []:
        certs.extend(
            load_amd_certificates(read_bounded(path, MAX_AMD_CERT_INPUT_BYTES, "certificate file"))
        )
    crl_path = getattr(args, "collateral", None)
    skip_revocation = bool(getattr(args, "skip_revocation", False))
    if crl_path and skip_revocation:
        raise InputError("--collateral (AMD's CRL) and --skip-revocation exclude each other")
    crl = read_bounded(crl_path, MAX_CRL_BYTES, "CRL") if crl_path else None
    expected = _expected_report_data(getattr(args, "report_data", None))

    verified = verify_snp_report(data, certs, at=at, crl=crl, report_data=expected)
    reasons = _verdict(verified, skip_revocation=skip_revocation)
    report = verified.report
    if getattr(args, "json", False):
        out = {
            "format": "sev-snp",
            "verdict": "rejected" if reasons else "verified",
            "reasons": reasons,
            "verified_at": at.isoformat(),
            "product": verified.product.value,
            "signing_key": verified.signing_key_kind.value,
            "chain": [describe(c) for c in (*verified.chain.certs, verified.chain.root)],
            "reported_tcb": verified.tcb.as_dict(),
            "certificate": verified.extensions.as_dict(),
            "chip_id_checked": verified.chip_id_checked,
            "revocation_checked": verified.revocation_checked,
            "revocation_skipped": skip_revocation,
            "report_data_checked": expected is not None,
            "report": report.as_dict(verified.product),
        }
        print(json.dumps(out, indent=2))
    else:
        lines = _text_lines(report, verified.product)
        chain = " -> ".join(describe(c) for c in (*verified.chain.certs, verified.chain.root))
        lines += [
            f"chain: {chain} (pinned)",
            f"verified_at: {at.isoformat()}",
            f"chip_id_check: {'matches the VCEK hwID' if verified.chip_id_checked else 'not checked (VLEK or masked)'}",
            f"revocation: {_revocation_line(verified.revocation_checked, skip_revocation)}",
            f"report_data_check: {'matches the expected value' if expected is not None else 'not checked (no --report-data)'}",
        ]
        if reasons:
            lines.append(f"verdict: rejected ({', '.join(reasons)})")
        elif verified.revocation_checked:
            lines.append("verdict: OK - signature, AMD chain, CRL and TCB verified; DEBUG not set")
        else:
            lines.append(
                "verdict: OK - signature, AMD chain and TCB verified; DEBUG not set; "
                "revocation NOT checked (--skip-revocation)"
            )
        print("\n".join(lines))
    for reason in reasons:
        print(f"lessee: rejected: {_REASON_TEXT[reason]}", file=sys.stderr)
    return 1 if reasons else 0


def _revocation_line(checked: bool, skipped: bool) -> str:
    if checked:
        return "AMD CRL checked"
    if skipped:
        return "not checked (--skip-revocation)"
    return "not checked (no CRL given: the default policy rejects this)"
