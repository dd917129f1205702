"""RimParseCache and RimCollection's reuse of parses: same answers, fewer parses, no failures kept.

Real RIMs (tests/assets/nvidia/rims/test_no_gpu, see its PROVENANCE.md). A parse has no validity
window of its own; the tests pin that a remembered parse never stands in for verification (a
RIM parsed once is still refused outside its signer chain's window).
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import InputError
from attest.nvidia.rim import (
    RimChainError,
    RimCollection,
    RimParseCache,
    RimParseError,
    RimVerifier,
    driver_rim_id,
    parse_rim,
    vbios_rim_id,
)
from tests.conftest import RIM_ERA, TODAY
from tests.nvidia.test_rim import DRIVER, VBIOS, flip_hash_digit

DRIVER_BYTES = DRIVER.read_bytes()
VBIOS_BYTES = VBIOS.read_bytes()
DRIVER_ID = driver_rim_id(arch="HOPPER", chip_info=None, driver_version="545.00")
VBIOS_ID = vbios_rim_id(
    project="1010", project_sku="0200", chip_sku="882", vbios_version="96.00.5e.00.01"
)


def test_hit_is_the_same_parse_and_is_counted() -> None:
    cache = RimParseCache()
    first = cache.parse(DRIVER_BYTES)
    again = cache.parse(bytes(bytearray(DRIVER_BYTES)))  # equal bytes, another object
    assert again is first
    assert first == parse_rim(DRIVER_BYTES)
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)


def test_a_changed_byte_is_a_miss_and_gets_its_own_parse() -> None:
    cache = RimParseCache()
    cache.parse(DRIVER_BYTES)
    # a different golden value parses fine (the signature would fail, later, in verification)
    other = flip_hash_digit(DRIVER_BYTES, 0)
    rim = cache.parse(other)
    assert rim.raw == other and rim != cache.parse(DRIVER_BYTES)
    assert cache.misses == 2 and len(cache) == 2


def test_failure_is_not_cached() -> None:
    cache = RimParseCache()
    for _ in range(2):
        with pytest.raises(RimParseError):
            cache.parse(b"<SoftwareIdentity/>")
    assert len(cache) == 0 and cache.misses == 2 and cache.hits == 0


def test_bounded_oldest_out_first() -> None:
    cache = RimParseCache(max_entries=1)
    cache.parse(DRIVER_BYTES)
    cache.parse(VBIOS_BYTES)
    assert len(cache) == 1
    cache.parse(DRIVER_BYTES)
    assert cache.misses == 3  # the driver RIM had been pushed out
    with pytest.raises(InputError):
        RimParseCache(max_entries=0)


def test_cached_parse_still_needs_verification_inside_the_window() -> None:
    """A parse has no window; verification keeps its own: the same cached RIM verifies in its
    era and is refused today (its signer chain has expired)."""
    cache = RimParseCache()
    rim = cache.parse(DRIVER_BYTES)
    assert cache.parse(DRIVER_BYTES) is rim
    RimVerifier().verify(rim, at=RIM_ERA)
    with pytest.raises(RimChainError):
        RimVerifier().verify(cache.parse(DRIVER_BYTES), at=TODAY)


def test_collection_parses_identical_inputs_once() -> None:
    cache = RimParseCache()
    eight_gpus = [DRIVER_BYTES, VBIOS_BYTES] * 8
    coll = RimCollection(eight_gpus, parse_cache=cache)
    assert cache.misses == 2 and cache.hits == 0
    assert len(coll) == 2 and coll.skipped == ()
    RimCollection(eight_gpus, parse_cache=cache)
    assert cache.misses == 2 and cache.hits == 2  # the next bundle parses nothing


def test_collection_with_cache_answers_like_one_without() -> None:
    inputs = [VBIOS_BYTES, b"not xml", DRIVER_BYTES, b"not xml", VBIOS_BYTES]
    named = [(VBIOS_ID, VBIOS_BYTES), ("NV_GPU_DRIVER_GH100_1.2.3", DRIVER_BYTES)]
    plain = RimCollection(inputs, named=named)
    cached = RimCollection(inputs, named=named, parse_cache=RimParseCache())
    assert cached.ids() == plain.ids()
    assert cached.rims == plain.rims
    # each bad input is reported under its own label, duplicates included
    assert cached.skipped == plain.skipped
    assert [label for label, _ in cached.skipped] == [
        "rims[1]",
        "rims[3]",
        "NV_GPU_DRIVER_GH100_1.2.3",
    ]
    assert cached.rim_bytes(DRIVER_ID) == DRIVER_BYTES
    for rim_id in (DRIVER_ID, VBIOS_ID):
        assert cached.rim_bytes(rim_id) == plain.rim_bytes(rim_id)
        assert cached.rim_bytes(rim_id) == cached.rim_bytes(rim_id)


def test_remembered_answers_keep_errors_and_absence() -> None:
    coll = RimCollection([DRIVER_BYTES])
    assert coll.rim_bytes(VBIOS_ID) is None
    assert coll.rim_bytes(VBIOS_ID) is None
    assert coll.rim_bytes(DRIVER_ID) == DRIVER_BYTES
    for _ in range(2):  # a malformed id raises every time, never remembered as "none"
        with pytest.raises(InputError):
            coll.rim_bytes("NV_GPU_DRIVER_GH100_x")


def test_thread_safe_under_concurrent_use() -> None:
    cache = RimParseCache(max_entries=4)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                assert cache.parse(DRIVER_BYTES).raw == DRIVER_BYTES
                assert cache.parse(VBIOS_BYTES).raw == VBIOS_BYTES
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(cache) == 2
    assert cache.hits + cache.misses == 80


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(DRIVER_BYTES) - 1), st.integers(1, 255))
def test_single_byte_flips_give_the_fresh_answer_or_a_typed_error(pos: int, x: int) -> None:
    cache = RimParseCache()
    cache.parse(DRIVER_BYTES)
    data = bytearray(DRIVER_BYTES)
    data[pos] ^= x
    try:
        fresh = parse_rim(bytes(data))
    except RimParseError as exc:
        with pytest.raises(RimParseError) as info:
            cache.parse(bytes(data))
        assert str(info.value) == str(exc)
        assert len(cache) == 1
    else:
        assert cache.parse(bytes(data)) == fresh


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_typed_errors(data: bytes) -> None:
    cache = RimParseCache()
    with pytest.raises(RimParseError):
        cache.parse(data)
    coll = RimCollection([data], parse_cache=cache)
    assert len(coll) == 0 and len(coll.skipped) == 1 and len(cache) == 0
