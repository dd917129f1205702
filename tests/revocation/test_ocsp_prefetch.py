"""Stapled response checks started ahead (OcspPrefetch) change nothing but the timing.

A verifier starts the checks of a chain's stapled responses before the chain's revocation step;
``check_chain_revocation(..., prefetched=...)`` then takes those outcomes. For every named
response case, with the pool or without, the verdicts, the verdict cache's contents and its
hit/miss counters equal those of the chain check alone. An outcome is taken only for the same
question at the same time; a question the cache already answers is not started at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from attest.concurrency import pool_workers, set_pool_workers
from attest.errors import ParseError
from attest.revocation import OcspCache, StapledOcsp, check_chain_revocation
from attest.revocation import ocsp as ocsp_module
from attest.revocation.ocsp import OcspPrefetch
from tests.revocation.pki import NOW, TestPki


@pytest.fixture
def workers() -> Iterator[Callable[[int], int]]:
    before = pool_workers()
    yield set_pool_workers
    set_pool_workers(before)


def _stapled_cases(cases: dict[str, bytes]) -> dict[str, StapledOcsp]:
    """Each case about the leaf stapled with the intermediate's good answer (cases that are
    not a successful response cannot be stapled at all and are left out)."""
    out: dict[str, StapledOcsp] = {}
    for name, der in cases.items():
        try:
            out[name] = StapledOcsp([der, cases["intermediate_good"]])
        except ParseError:
            continue
    return out


def _run(
    pki: TestPki, stapled: dict[str, StapledOcsp], *, prefetch: bool, allow_hold: bool = False
) -> list[object]:
    """Every case twice through one small cache (evictions happen), with or without the
    checks started ahead; the verdicts and the cache's state after each."""
    cache = OcspCache(max_entries=8)
    out: list[object] = []
    for name in sorted(stapled):
        for _ in range(2):
            started = None
            if prefetch:
                started = OcspPrefetch(stapled[name], at=NOW, allow_hold=allow_hold, cache=cache)
                started.start(pki.chain, (0, 1))
            checks = check_chain_revocation(
                pki.chain,
                indices=(0, 1),
                mode="stapled",
                source=stapled[name],
                at=NOW,
                allow_hold=allow_hold,
                cache=cache,
                prefetched=started,
            )
            out.append((name, checks, cache.hits, cache.misses, len(cache)))
    return out


@pytest.mark.parametrize("allow_hold", [False, True])
def test_prefetched_checks_answer_as_the_chain_check(
    pki: TestPki,
    cases: dict[str, bytes],
    allow_hold: bool,
    workers: Callable[[int], int],
) -> None:
    stapled = _stapled_cases(cases)
    workers(0)
    expected = _run(pki, stapled, prefetch=False, allow_hold=allow_hold)
    statuses = {c.status for _, checks, *_ in expected for c in checks}  # type: ignore[attr-defined]
    assert {"good", "revoked", "invalid", "unknown", "missing", "certificate_hold"} <= statuses
    for n in (0, 1, 2):
        workers(n)
        for _ in range(2):
            assert _run(pki, stapled, prefetch=True, allow_hold=allow_hold) == expected


def test_only_questions_the_cache_cannot_answer_are_started(
    pki: TestPki,
    cases: dict[str, bytes],
    workers: Callable[[int], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workers(1)
    runs: list[int] = []
    real_run = ocsp_module._PendingCheck.run

    def counted(self: ocsp_module._PendingCheck) -> object:
        runs.append(self.cert.serial_number)
        return real_run(self)

    monkeypatch.setattr(ocsp_module._PendingCheck, "run", counted)
    stapled = StapledOcsp([cases["good"], cases["intermediate_good"]])
    cache = OcspCache()
    cold = OcspPrefetch(stapled, at=NOW, cache=cache)
    cold.start(pki.chain, (0, 1, 0))  # the same question twice: started once
    assert len(cold) == 2
    assert (cache.hits, cache.misses) == (0, 0)  # looking ahead counts nothing
    checks = check_chain_revocation(
        pki.chain,
        indices=(0, 1),
        mode="stapled",
        source=stapled,
        at=NOW,
        cache=cache,
        prefetched=cold,
    )
    assert [c.status for c in checks] == ["good", "good"]
    assert sorted(runs) == sorted(c.serial_number for c in pki.chain[:2])  # each checked once
    assert (cache.hits, cache.misses) == (0, 2)
    warm = OcspPrefetch(stapled, at=NOW, cache=cache)
    warm.start(pki.chain, (0, 1))
    assert len(warm) == 0
    odd = OcspPrefetch(stapled, at=NOW, cache=cache)
    odd.start(pki.chain, (-1, 2, 7))  # no issuer: nothing started, nothing raised
    assert len(odd) == 0


def test_an_outcome_is_taken_only_for_the_same_time(
    pki: TestPki, cases: dict[str, bytes], workers: Callable[[int], int]
) -> None:
    """Started for one time, asked at another (where the response is stale): the chain check
    does its own work and gives its own verdict."""
    workers(0)
    stapled = StapledOcsp([cases["good"], cases["intermediate_good"]])
    started = OcspPrefetch(stapled, at=NOW, cache=OcspCache())
    started.start(pki.chain, (0, 1))
    later = NOW + timedelta(days=30)
    taken = check_chain_revocation(
        pki.chain,
        indices=(0, 1),
        mode="stapled",
        source=stapled,
        at=later,
        cache=OcspCache(),
        prefetched=started,
    )
    alone = check_chain_revocation(
        pki.chain, indices=(0, 1), mode="stapled", source=stapled, at=later, cache=OcspCache()
    )
    assert taken == alone
    assert all(c.status == "invalid" for c in taken)
