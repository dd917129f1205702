# ruff: noqa: N999  (the file is named after the threat id, as tests/regressions requires)
"""T-DOWNGRADE-03 (fixed): an OCSP response whose own signature BIT STRING is not DER is still
accepted (low severity: encoding malleability).

Found by ``tests/revocation/test_ocsp_properties.py::test_single_byte_changes_are_invalid``
(hypothesis, a full ``make test`` run): the ``good`` case of tests/revocation/pki.py with one
byte changed, offset 257, the unused-bits octet of the BasicOCSPResponse's signature BIT STRING,
0x00 -> 0x01 (inputs/ocsp_response_sig_unused_bits.der). The last signature octet (0x44 in
this input) has a zero low bit, so the string is still valid BER; ``cryptography`` ignores the
count, the signed data and the signature value are the original ones, and the verdict was
``good``. (ECDSA signatures are randomised, so the property test hit this only in runs whose
signature ended in an even octet; with an odd one the parser refuses the string itself. This
input is one such response, kept.)

The same class as the responder certificate's BIT STRING (the sibling regression test here):
no forgery follows, but two byte strings carry one verdict, and exact bytes are what the
revocation caches key on and what the log archives. Fixed by requiring 0 unused bits
(``attest.revocation.ocsp._response_signature_bits_canonical``).
"""

from __future__ import annotations

from pathlib import Path

from attest.revocation.ocsp import check_ocsp_response
from tests.conftest import TODAY
from tests.revocation.pki import load_pki

INPUT = (Path(__file__).parent / "inputs" / "ocsp_response_sig_unused_bits.der").read_bytes()
#: Offset of the unused-bits octet that was changed, and its DER value.
OFFSET, CANONICAL = 257, 0x00


def _canonical() -> bytes:
    return INPUT[:OFFSET] + bytes([CANONICAL]) + INPUT[OFFSET + 1 :]


def test_the_canonical_response_is_good() -> None:
    pki = load_pki()
    check = check_ocsp_response(_canonical(), cert=pki.leaf, issuer=pki.intermediate, at=TODAY)
    assert check.ok and check.status == "good" and INPUT[OFFSET] == 0x01


def test_noncanonical_response_signature_is_refused() -> None:
    pki = load_pki()
    check = check_ocsp_response(INPUT, cert=pki.leaf, issuer=pki.intermediate, at=TODAY)
    assert not check.ok and check.status == "invalid"
    assert check.code == "malformed"
