"""The replay's per-process caches (parsed evidence by digest) and the verdict fast path:
a hit must be exactly what a fresh parse or a full comparison would give, failures are never
kept, and the bounds hold."""

from __future__ import annotations

import hashlib

import pytest

from agent.audit import replay
from agent.audit.replay import EntryReplayer, ReplayConfig, Verdict, _spki, compare_verdicts
from attest.bundle import load_bundle
from attest.errors import InputError
from tests.audit.helpers import VERIFIER_KEY, evidence

EVIDENCE = evidence().to_json()
DIGEST = hashlib.sha256(EVIDENCE).digest()


def _replayer() -> EntryReplayer:
    return EntryReplayer(ReplayConfig(_spki(VERIFIER_KEY.public_key())))


def test_repeated_evidence_is_parsed_once_and_equals_a_fresh_parse() -> None:
    r = _replayer()
    first = r._bundle(DIGEST, EVIDENCE)
    assert r._bundle(DIGEST, EVIDENCE) is first
    assert first == load_bundle(EVIDENCE)
    assert r._evidence_bytes == len(EVIDENCE)


def test_evidence_that_does_not_parse_is_not_kept() -> None:
    r = _replayer()
    bad = EVIDENCE[:-1]
    digest = hashlib.sha256(bad).digest()
    for _ in range(2):  # raised both times: nothing was stored after the first
        with pytest.raises(InputError):
            r._bundle(digest, bad)
    assert digest not in r._evidence and r._evidence_bytes == 0


def test_evidence_cache_is_bounded_by_count_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    r = _replayer()
    monkeypatch.setattr(replay, "MAX_CACHED_EVIDENCE", 2)
    for i in range(5):
        r._bundle(bytes([i]) * 32, EVIDENCE)
        assert len(r._evidence) <= 2
    monkeypatch.setattr(replay, "EVIDENCE_CACHE_BYTES", len(EVIDENCE) - 1)
    r = _replayer()
    assert r._bundle(DIGEST, EVIDENCE) == load_bundle(EVIDENCE)
    assert not r._evidence and r._evidence_bytes == 0  # larger than the whole cache: not kept


def test_whole_verdict_text_ignores_key_order_but_not_values() -> None:
    body = {"ear.status": "affirming", "measres": "success", "x": [1, 2]}
    a = Verdict.build({"cpu0": body, "gpu0": dict(body)}, [])
    b = Verdict.build({"gpu0": dict(reversed(body.items())), "cpu0": body}, ())
    assert a is not None and b is not None
    assert a.text == b.text and compare_verdicts(a, b) == []
    c = Verdict.build({"cpu0": body, "gpu0": dict(body, x=[1, True])}, [])
    assert c is not None and c.text != a.text
    assert compare_verdicts(a, c) == ["gpu0 claims differ: ['x']"]
