"""Fixtures for the revocation tests: the synthetic PKI and its named OCSP responses."""

from __future__ import annotations

import pytest

from tests.revocation.pki import TestPki, build_cases, load_pki


@pytest.fixture(scope="session")
def pki() -> TestPki:
    return load_pki()


@pytest.fixture(scope="session")
def cases(pki: TestPki) -> dict[str, bytes]:
    return build_cases(pki)
