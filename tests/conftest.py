"""Shared test fixtures: paths to the real vectors and the fixed verification times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from agent.emulation import EmulationPki

ASSETS = Path(__file__).parent / "assets"
NVIDIA = ASSETS / "nvidia"
CPU = ASSETS / "cpu"
AUDIT = ASSETS / "audit"
#: The shared vectors beside the checkout; tests/assets holds byte-identical copies.
SHARED_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"

#: Every NVIDIA RIM signer certificate in the vectors is valid on this day.
RIM_ERA = datetime(2024, 6, 1, tzinfo=UTC)
#: "Today" for the vectors' expiry checks (the day these tests were written).
TODAY = datetime(2026, 11, 28, tzinfo=UTC)

LEGACY_NONCE = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e"


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One emulation PKI for the test session (roots generated here, never committed)."""
    from agent.emulation import EmulationPki

    path = tmp_path_factory.mktemp("emulation") / "pki"
    EmulationPki.create(path)
    return path


@pytest.fixture(scope="session")
def pki(pki_dir: Path) -> EmulationPki:
    from agent.emulation import EmulationPki

    return EmulationPki.load(pki_dir)


@pytest.fixture
def nvidia_assets() -> Path:
    return NVIDIA
