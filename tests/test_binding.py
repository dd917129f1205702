from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.binding import derive_binding
from attest.errors import InputError

NONCE = bytes(range(32))
KEY = b"\x01" * 32


def test_known_answer() -> None:
    b = derive_binding(NONCE, KEY)

    # Recomputed by hand from the documented encoding (docs/binding.md).
    def lp(x: bytes) -> bytes:
        return len(x).to_bytes(4, "big") + x

    rd = hashlib.sha512(
        lp(b"lessee/v1/binding/report-data") + lp(b"lessee/v1/key-release") + lp(NONCE) + lp(KEY)
    ).digest()
    assert b.report_data == rd
    assert b.gpu_nonce == hashlib.sha256(lp(b"lessee/v1/binding/gpu-nonce") + rd).digest()
    assert len(b.report_data) == 64 and len(b.gpu_nonce) == 32
    assert b.matches_report_data(rd) and not b.matches_report_data(rd[:-1] + b"\0")


def test_each_input_changes_binding() -> None:
    base = derive_binding(NONCE, KEY)
    assert derive_binding(NONCE[:-1] + b"\xff", KEY) != base
    assert derive_binding(NONCE, KEY[:-1] + b"\x02") != base
    assert derive_binding(NONCE, KEY, "lessee/v1/other") != base


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=40), st.binary(min_size=1, max_size=40))
def test_no_shifting_collisions(a: bytes, b: bytes) -> None:
    # Moving bytes between nonce and key never gives the same binding (length prefixes).
    if len(a) > 16:
        assert derive_binding(a, b) != derive_binding(a[:-1], a[-1:] + b)


@pytest.mark.parametrize("nonce,key", [(b"\0" * 8, KEY), (NONCE, b""), (b"\0" * 65, KEY)])
def test_bounds(nonce: bytes, key: bytes) -> None:
    with pytest.raises(InputError):
        derive_binding(nonce, key)
