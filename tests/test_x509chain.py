from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from attest import roots
from attest.errors import ChainError, InputError
from attest.x509chain import ChainCache, load_certificate, load_pem_chain, verify_chain
from tests.conftest import NVIDIA, TODAY


def _hopper() -> tuple:  # type: ignore[type-arg]
    return load_pem_chain((NVIDIA / "hopper/hopperCertChain.txt").read_bytes())


def test_hopper_chain_verifies_to_pinned_root() -> None:
    chain = verify_chain(_hopper(), root=roots.nvidia_device_root(), at=TODAY, expected_length=5)
    assert chain.valid_until.year == 9999
    assert chain.leaf.subject.rfc4514_string().startswith("CN=GH100 A01 GSP FMC LF")


def test_wrong_length_rejected() -> None:
    with pytest.raises(ChainError) as e:
        verify_chain(_hopper()[:4], root=roots.nvidia_device_root(), at=TODAY, expected_length=5)
    assert e.value.reason == "length"


def test_chain_does_not_reach_other_root() -> None:
    with pytest.raises(ChainError) as e:
        verify_chain(_hopper(), root=roots.nvidia_rim_root(), at=TODAY)
    assert e.value.reason in {"issuer_mismatch", "bad_signature"}


def test_swapped_links_rejected() -> None:
    c = _hopper()
    with pytest.raises(ChainError) as e:
        verify_chain((c[1], c[0], *c[2:]), root=roots.nvidia_device_root(), at=TODAY)
    assert e.value.reason == "issuer_mismatch"


def test_not_yet_valid() -> None:
    with pytest.raises(ChainError) as e:
        verify_chain(
            _hopper(), root=roots.nvidia_device_root(), at=datetime(2019, 1, 1, tzinfo=UTC)
        )
    assert e.value.reason == "not_yet_valid"


def test_naive_time_refused() -> None:
    with pytest.raises(InputError):
        verify_chain(_hopper(), root=roots.nvidia_device_root(), at=datetime(2025, 1, 1))


def test_cache_hit_only_inside_window() -> None:
    cache = ChainCache()
    first = cache.verify(_hopper(), root=roots.nvidia_device_root(), at=TODAY)
    assert cache.verify(_hopper(), root=roots.nvidia_device_root(), at=TODAY) is first
    with pytest.raises(ChainError):
        cache.verify(
            _hopper(), root=roots.nvidia_device_root(), at=datetime(2019, 1, 1, tzinfo=UTC)
        )


def test_pem_bounds() -> None:
    with pytest.raises(InputError):
        load_pem_chain(b"not a pem")
    with pytest.raises(InputError):
        load_pem_chain(b"-----BEGIN CERTIFICATE-----\n" * 11)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_der_certificates_only_raise_input_errors(data: st.DataObject) -> None:
    der = bytearray(_hopper()[1].public_bytes(Encoding.DER))
    pos = data.draw(st.integers(0, len(der) - 1))
    der[pos] = data.draw(st.integers(0, 255))
    try:
        cert = load_certificate(bytes(der))
    except InputError:
        return
    # Whatever loads must be fully decoded: chain checks then fail only with typed errors.
    try:
        verify_chain((cert, *_hopper()[2:]), root=roots.nvidia_device_root(), at=TODAY)
    except ChainError:
        pass
