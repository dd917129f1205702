# ruff: noqa: N999  (the file is named after the threat id, as tests/regressions requires)
"""T-EVIDENCE-03 (fixed): a certificate name attribute tagged BIT STRING escapes as
``TypeError`` from the certificate loaders.

Found by tests/adversarial (``pem_chain`` op ``b64@2459=D`` on the hopper_legacy chain, then the
deterministic ``name-tag-03`` op): one base64 character turns the countryName value's
PrintableString tag (0x13) into BIT STRING (0x03). Every length stays valid, cryptography loads
the certificate lazily, and decoding ``subject``/``issuer`` raises ``TypeError("oid must be
X500_UNIQUE_IDENTIFIER for BitString type.")``. ``attest/x509chain.py::_decode_eagerly`` and
``attest/snp/verify.py::_force_parse`` do not list ``TypeError`` among the decode errors, so:

* ``load_pem_chain`` (device chains, ``load_evidence(..., certs=)``, TDX PCK chains inside a
  quote via ``verify_quote_signatures``) and
* ``load_amd_certificates``

raise ``TypeError`` on attacker-supplied chains instead of ``InputError``/``ChainError``. (The RIM
parser already maps it to ``RimParseError``; OCSP maps it to an ``invalid`` verdict.)
Inputs: inputs/pem_chain_bitstring_name.pem, inputs/amd_chain_bitstring_name.pem,
inputs/tdx_pck_bitstring_name.dat (the dcap-qvl quote with the PCK leaf's name re-tagged).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from attest.errors import InputError, LesseeError
from attest.snp.verify import load_amd_certificates
from attest.tdx.quote import parse_quote
from attest.tdx.verify import verify_quote_signatures
from attest.x509chain import load_pem_chain

INPUTS = Path(__file__).parent / "inputs"
DCAP_AT = datetime(2025, 6, 19, 10, 16, 3, tzinfo=UTC) + timedelta(hours=1)

# Fixed: TypeError from a BIT STRING name attribute is now mapped to InputError at load time.


def test_the_quote_still_parses() -> None:
    """The PEM chain is opaque to the quote parser: only the verifier decodes it."""
    q = parse_quote((INPUTS / "tdx_pck_bitstring_name.dat").read_bytes())
    assert q.version == 4 and b"BEGIN CERTIFICATE" in q.signature_data.pck_chain_pem


def test_load_pem_chain() -> None:
    with pytest.raises(InputError):
        load_pem_chain((INPUTS / "pem_chain_bitstring_name.pem").read_bytes())


def test_load_amd_certificates() -> None:
    with pytest.raises(InputError):
        load_amd_certificates((INPUTS / "amd_chain_bitstring_name.pem").read_bytes())


def test_tdx_pck_chain_in_quote() -> None:
    q = parse_quote((INPUTS / "tdx_pck_bitstring_name.dat").read_bytes())
    with pytest.raises(LesseeError):
        verify_quote_signatures(q, at=DCAP_AT)
