# ruff: noqa: N999  (the file is named after the threat id, as tests/regressions requires)
"""T-DOWNGRADE-03 (fixed): an OCSP response whose embedded responder certificate
has a non-DER signature BIT STRING is still accepted (low severity: encoding malleability).

Found by tests/adversarial/fuzz_atheris.py (``ocsp`` target, libFuzzer ``ChangeBit``, ~80 000
executions). Input: inputs/ocsp_responder_cert_sig_unused_bits.der, the ``delegated_ed25519``
case of tests/revocation/pki.py (Ed25519 delegated responder, leaf status good) with one byte
changed: offset 618, the unused-bits octet of the responder certificate's signatureValue BIT
STRING, 0x00 -> 0x02. The last signature octet (0x43) has non-zero bits in the two "unused"
positions, which DER forbids (X.690 11.2.1); ``cryptography`` ignores the count, the signature
value is unchanged, so the certificate chain and the response verify and the verdict is
``good``.

No forgery follows (the signed data and signature values are the original ones), but two
different byte strings now carry the same verdict, so archived collateral is not unique and a
digest-based audit comparison can be defeated. A strict check (every embedded certificate's
signature BIT STRING has 0 unused bits, or the response re-encodes to the same bytes) fixes it.
"""

from __future__ import annotations

from pathlib import Path

from attest.revocation.ocsp import check_ocsp_response
from tests.conftest import TODAY
from tests.revocation.pki import load_pki

INPUT = (Path(__file__).parent / "inputs" / "ocsp_responder_cert_sig_unused_bits.der").read_bytes()
#: Offset of the unused-bits octet that was changed, and its DER value.
OFFSET, CANONICAL = 618, 0x00


def _canonical() -> bytes:
    return INPUT[:OFFSET] + bytes([CANONICAL]) + INPUT[OFFSET + 1 :]


def test_the_canonical_response_is_good() -> None:
    pki = load_pki()
    check = check_ocsp_response(_canonical(), cert=pki.leaf, issuer=pki.intermediate, at=TODAY)
    assert check.ok and check.status == "good" and INPUT[OFFSET] == 0x02


def test_noncanonical_responder_certificate_is_refused() -> None:
    pki = load_pki()
    check = check_ocsp_response(INPUT, cert=pki.leaf, issuer=pki.intermediate, at=TODAY)
    assert not check.ok, "a response with a non-DER responder certificate was accepted"
