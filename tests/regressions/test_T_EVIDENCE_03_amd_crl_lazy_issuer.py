# ruff: noqa: N999  (the file is named after the threat id, as tests/regressions requires)
"""T-EVIDENCE-03 (fixed): an AMD CRL whose issuer name does not decode escaped as a bare
``ValueError`` from the SEV-SNP revocation check (and from loading a held list).

Found by hypothesis (``tests/broker/test_amd_crl_fetch.py::
test_hostile_answers_only_raise_the_typed_error``): ``cryptography`` parses a CRL's issuer,
dates, extensions and entries lazily, so a list whose framing is intact but whose issuer CN
carries another string tag loads, then raises ``ValueError`` at ``crl.issuer``. In the
evidence (the host chooses that CRL) this reached ``appraise_bundle`` and the broker as an
untyped error instead of a verdict. Input: inputs/amd_crl_issuer_bad_tag.der, an emulated
Milan CRL with the tag of its issuer CN changed, offset 88, 0x0C (UTF8String) -> 0x0D.
Fixed in ``attest.snp.verify._load_crl``: every lazily parsed field is decoded under the same
``InputError`` as a malformed CRL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from attest.ear import Status
from attest.errors import InputError
from attest.snp.report import Product, SigningKey
from attest.snp.verify import check_amd_crl, load_held_crl
from tests.appraise.test_composite_caches import Setup, _cpu_detail

INPUT = (Path(__file__).parent / "inputs" / "amd_crl_issuer_bad_tag.der").read_bytes()
OFFSET, DER_TAG = 88, 0x0C


def test_the_input_differs_from_a_well_formed_list_in_one_tag_only() -> None:
    assert (
        INPUT[OFFSET] == 0x0D and INPUT[OFFSET + 2 : OFFSET + 28] == b"LESSEE EMULATION ARK-Milan"
    )


def test_held_and_checked_lists_give_a_typed_error(tmp_path: Path) -> None:
    setup = Setup(tmp_path / "pki")
    with pytest.raises(InputError, match="malformed CRL"):
        load_held_crl(INPUT, SigningKey.VCEK, Product.MILAN)
    with pytest.raises(InputError, match="malformed CRL"):
        check_amd_crl(INPUT, ark=setup.pki.ark.cert, intermediate=setup.pki.ask.cert, at=setup.made)


def test_in_evidence_it_is_a_verdict_not_a_crash(tmp_path: Path) -> None:
    setup = Setup(tmp_path / "pki")
    verdict = _cpu_detail(setup, setup.context(), setup.session(crl=INPUT), datetime.now(UTC))
    assert verdict == (Status.CONTRAINDICATED, [("snp.verification", "InputError", "reject")])
