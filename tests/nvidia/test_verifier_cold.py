"""The cold pipeline's shared work: what one verification of the legacy Hopper set pays for."""

from __future__ import annotations

from attest.nvidia.verifier import Status, VerifierCaches
from tests.conftest import TODAY
from tests.nvidia.test_verifier import LEGACY, _run


def test_cold_pipeline_verifies_each_shared_link_once() -> None:
    """Device chain: 4 links; driver RIM chain: 3; VBIOS RIM chain: only its L4 -> L3 link is
    new, L3 -> CA and CA -> root come from the link cache."""
    caches = VerifierCaches()
    result = _run(LEGACY, caches=caches)
    assert result.status is Status.WARNING  # revocation skip: at best a warning
    assert not result.devices[0].failures
    assert (caches.chains.link_misses, caches.chains.link_hits) == (8, 2)
    assert len(caches.rims) == 2


def test_warm_pipeline_touches_no_link_and_expiry_still_fails() -> None:
    caches = VerifierCaches()
    first = _run(LEGACY, caches=caches)
    again = _run(LEGACY, caches=caches)
    assert again.devices == first.devices
    assert (caches.chains.link_misses, caches.chains.link_hits) == (8, 2)
    # outside the RIM chains' window no cached link or chain answers: the RIMs are expired
    late = _run(LEGACY, caches=caches, at=TODAY)
    fields = {f.field for f in late.devices[0].failures}
    assert "x-nvidia-gpu-driver-rim-cert-chain" in fields
    assert "x-nvidia-gpu-vbios-rim-cert-chain" in fields
    assert late.status is Status.CONTRAINDICATED
