"""The shipped AMD roots are the vendored bytes and match the pinned hashes."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from attest.errors import VerificationError
from attest.snp.report import Product, SigningKey
from attest.snp.verify import ARK_SHA256, INTERMEDIATE_SHA256, pinned_ark, pinned_chain
from tests.snp.helpers import GSG

SHIPPED = [
    "ask_ark_milan.pem",
    "ask_ark_genoa.pem",
    "ask_ark_turin_vcek.pem",
    "ask_ark_milan_vlek.pem",
]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_are_the_vendored_bytes(name: str) -> None:
    shipped = resources.files("attest.roots").joinpath("amd", name).read_bytes()
    assert shipped == (GSG / name).read_bytes()


@pytest.mark.parametrize(("product", "kind"), list(INTERMEDIATE_SHA256))
def test_pinned_chains_match_constants(product: Product, kind: SigningKey) -> None:
    inter, ark = pinned_chain(product, kind)
    assert hashlib.sha256(ark.public_bytes(Encoding.DER)).hexdigest() == ARK_SHA256[product]
    assert (
        hashlib.sha256(inter.public_bytes(Encoding.DER)).hexdigest()
        == INTERMEDIATE_SHA256[(product, kind)]
    )
    assert ark.subject.rfc4514_string().startswith(f"CN=ARK-{product.value}")
    inter.verify_directly_issued_by(ark)
    ark.verify_directly_issued_by(ark)


def test_three_distinct_arks() -> None:
    assert len({pinned_ark(p).public_bytes(Encoding.DER) for p in Product}) == 3
    assert len(set(ARK_SHA256.values())) == 3


def test_unshipped_asvk_is_named() -> None:
    with pytest.raises(VerificationError) as e:
        pinned_chain(Product.GENOA, SigningKey.VLEK)
    assert e.value.reason == "missing_certificate"
