"""The copied vectors are byte-identical to the shared ones, and the pinned roots are NVIDIA's."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes

from attest import roots
from tests.conftest import ASSETS, SHARED_VECTORS


@pytest.mark.skipif(not SHARED_VECTORS.is_dir(), reason="../shared/vectors not present")
def test_assets_match_shared_vectors() -> None:
    checked = 0
    for src in SHARED_VECTORS.rglob("*"):
        if src.is_file():
            copy = ASSETS / src.relative_to(SHARED_VECTORS)
            assert copy.is_file(), f"missing copy of {src}"
            assert (
                hashlib.sha256(copy.read_bytes()).digest()
                == hashlib.sha256(src.read_bytes()).digest()
            ), src
            checked += 1
    assert checked > 200


def test_pinned_nvidia_roots_fingerprints() -> None:
    dev = roots.nvidia_device_root().fingerprint(hashes.SHA256()).hex()
    rim = roots.nvidia_rim_root().fingerprint(hashes.SHA256()).hex()
    assert dev.startswith("102bf659") and dev.endswith("167b48")
    assert rim.startswith("12977b51") and rim.endswith("1df5d1")
    assert (ASSETS / "nvidia/roots/verifier_device_root.pem").read_bytes() == roots._read(
        "nvidia_device_root.pem"
    )
