"""One emulation PKI per test session (RSA-4096 key generation is the slow part)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.emulation import EmulatedGpu, EmulationPki


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulation") / "pki"


@pytest.fixture(scope="session")
def pki_created(pki_dir: Path) -> tuple[EmulationPki, float]:
    """The session PKI and how long creating it took (seconds)."""
    start = time.perf_counter()
    pki = EmulationPki.create(pki_dir)
    return pki, time.perf_counter() - start


@pytest.fixture(scope="session")
def pki(pki_created: tuple[EmulationPki, float]) -> EmulationPki:
    return pki_created[0]


@pytest.fixture(scope="session")
def gpu(pki: EmulationPki) -> EmulatedGpu:
    return EmulatedGpu(pki)


@pytest.fixture
def at() -> Iterator[datetime]:
    """Verification time: now (emulated OCSP answers are stamped with the signing time)."""
    yield datetime.now(UTC)
