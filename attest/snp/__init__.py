"""AMD SEV-SNP evidence: strict report parser (``report``) and verifier (``verify``).

Parse, then verify; appraisal against a policy lives elsewhere and works on the typed facts these
two modules expose. See docs/snp.md for the format and every check, one by one.
"""

from attest.snp.report import (
    AttestationReport,
    GuestPolicy,
    KeyInfo,
    PlatformInfo,
    Product,
    SigningKey,
    TcbVersion,
    parse_report,
)
from attest.snp.verify import (
    AmdCertExtensions,
    VerifiedSnpReport,
    load_amd_certificates,
    verify_snp_report,
)

__all__ = [
    "AmdCertExtensions",
    "AttestationReport",
    "GuestPolicy",
    "KeyInfo",
    "PlatformInfo",
    "Product",
    "SigningKey",
    "TcbVersion",
    "VerifiedSnpReport",
    "load_amd_certificates",
    "parse_report",
    "verify_snp_report",
]
