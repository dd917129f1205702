"""The replay's per-process caches (appraisal contexts, archived roots) and the verdict fast
path: a hit must be exactly what building afresh or a full comparison would give, failures are
never kept, and the bounds hold."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.audit import replay
from agent.audit.bundle import Bundle
from agent.audit.replay import (
    EntryInput,
    EntryReplayer,
    ReplayConfig,
    Verdict,
    _inputs,
    _spki,
    compare_verdicts,
    composite_appraise,
)
from agent.audit.verify import BlobKeeper, verify_bundle
from attest.appraise.common import DeviceAppraisal
from attest.appraise.composite import AppraisalContext
from attest.binding import SessionBinding
from attest.bundle import EvidenceBundle
from attest.ear import MAX_CLOCK_SKEW_SECONDS, AttestationResult, EarError, VerifyingKey
from attest.errors import InputError
from attest.findings import Finding
from attest.policy import Policy
from tests.audit.helpers import (
    RIMS,
    VERIFIER_KEY,
    build,
    evidence,
    forge_attest,
    stand_in_appraise,
)
from tests.log.helpers import LOG_SIGNER

#: The appraisal contexts handed to the appraisal, in call order.
SEEN: list[AppraisalContext] = []


def _capturing(
    bundle: EvidenceBundle,
    binding: SessionBinding,
    policy: Policy,
    at: datetime,
    ctx: AppraisalContext,
) -> tuple[tuple[DeviceAppraisal, ...], tuple[Finding, ...]]:
    SEEN.append(ctx)
    return composite_appraise(bundle, binding, policy, at, ctx)


def _replayer() -> EntryReplayer:
    return EntryReplayer(ReplayConfig(_spki(VERIFIER_KEY.public_key()), appraise=_capturing))


@pytest.fixture(scope="module")
def two_collateral_sets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EntryInput]]:
    """Two attest entries with the broker's RIMs, then one whose broker held them reversed."""
    b = build(tmp_path_factory.mktemp("ctx"), stand_in=False)
    b.attest(evidence())
    b.attest(evidence())
    forge_attest(b, bundle=evidence(), rims=tuple(reversed(RIMS)))
    path = b.export()
    with Bundle(path) as bundle:
        items = list(_inputs(bundle, verify_bundle(bundle, LOG_SIGNER.verifier())))
    b.close()
    yield items


def test_each_entry_is_appraised_with_its_own_collateral(
    two_collateral_sets: list[EntryInput],
) -> None:
    r = _replayer()
    SEEN.clear()
    results = [r.replay(item) for item in two_collateral_sets]
    assert all(x.verdict_equal and not x.findings for x in results)
    first, second, third = SEEN
    assert list(first.rims) == list(second.rims) == list(RIMS)
    assert list(third.rims) == list(reversed(RIMS))


def test_every_entrys_collateral_is_checked(
    two_collateral_sets: list[EntryInput],
) -> None:
    r = _replayer()
    first, second, _ = two_collateral_sets
    assert r.replay(first).verdict_equal
    rim = next(ref for ref in second.entry.collateral if ref.role == "broker-rim-0")
    blobs = {k: v for k, v in second.blobs.items() if k != rim.sha256}
    out = r.replay(replace(second, blobs=blobs))
    assert [f.code for f in out.findings] == ["replay_blob_unusable"]
    assert out.verdict_equal is None


def test_evidence_is_parsed_for_every_entry(
    two_collateral_sets: list[EntryInput], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real evidence never repeats (each report carries its session's nonce), so the replay
    keeps no parsed evidence: a benchmark log that repeats one bundle costs what a real one
    does."""
    parsed: list[bytes] = []
    real_load = replay.load_bundle

    def counting(data: bytes) -> EvidenceBundle:
        parsed.append(data)
        return real_load(data)

    monkeypatch.setattr(replay, "load_bundle", counting)
    r = _replayer()
    for item in two_collateral_sets:
        r.replay(item)
    assert len(parsed) == 3 and len(set(parsed)) == 1


def test_whole_verdict_text_ignores_key_order_but_not_values() -> None:
    body = {"ear.status": "affirming", "measres": "success", "x": [1, 2]}
    a = Verdict.build({"cpu0": body, "gpu0": dict(body)}, [])
    b = Verdict.build({"gpu0": dict(reversed(body.items())), "cpu0": body}, ())
    assert a is not None and b is not None
    assert a.text == b.text and compare_verdicts(a, b) == []
    c = Verdict.build({"cpu0": body, "gpu0": dict(body, x=[1, True])}, [])
    assert c is not None and c.text != a.text
    assert compare_verdicts(a, c) == ["gpu0 claims differ: ['x']"]


def test_blob_keeper_hands_each_blob_out_once_within_its_bounds() -> None:
    keeper = BlobKeeper(max_bytes=10, max_blob_bytes=6)
    assert not keeper.wants(7)  # larger than one blob may be
    keeper.keep(b"a", b"123456")
    assert not keeper.wants(5)  # 6 + 5 > 10
    keeper.keep(b"b", b"12345")  # over the total: not kept
    assert keeper.take(b"a") == b"123456"
    assert keeper.take(b"a") is None  # once: a repeat is read (and hashed) again
    assert keeper.take(b"b") is None
    assert keeper.wants(10 - 6)


def test_with_the_keeper_each_blob_is_read_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With the keeper, each blob of a clean log is read once and every entry still gets all of
    its blobs (a replaced blob is neither kept nor used: ``test_replaced_evidence_blob``)."""
    b = build(tmp_path_factory.mktemp("keeper"), stand_in=False)
    b.attest(evidence())
    b.attest(evidence(cc_mode_on=False))
    path = b.export()
    b.close()
    with Bundle(path) as bundle:
        reads: list[bytes] = []
        real_read = bundle.read_blob

        def counting(digest: bytes) -> bytes:
            reads.append(digest)
            return real_read(digest)

        bundle.read_blob = counting  # type: ignore[method-assign]
        keeper = BlobKeeper(replay.KEPT_BLOB_BYTES, replay.MAX_CACHED_BLOB_BYTES)
        audit = verify_bundle(bundle, LOG_SIGNER.verifier(), keeper=keeper)
        items = list(_inputs(bundle, audit, keeper))
    assert audit.ok and len(reads) == len(set(reads)) == len(bundle.blob_digests())
    for item in items:
        assert set(item.blobs) == {ref.sha256 for ref in item.entry.blob_refs()}
    assert [x.verdict_equal for x in map(_replayer().replay, items)] == [True, True]


# ---- verified results, by exact token text ---------------------------------------------------


@pytest.fixture(scope="module")
def attest_then_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EntryInput]]:
    """An attest entry and the release of its result: the release carries the same token."""
    b = build(tmp_path_factory.mktemp("memo"), stand_in=True)
    b.release(b.attest(evidence()))
    path = b.export()
    with Bundle(path) as bundle:
        items = list(_inputs(bundle, verify_bundle(bundle, LOG_SIGNER.verifier())))
    b.close()
    yield items


def _stand_in_replayer() -> EntryReplayer:
    return EntryReplayer(ReplayConfig(_spki(VERIFIER_KEY.public_key()), appraise=stand_in_appraise))


def _counting_verify_ear(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = replay.verify_ear

    def counting(token: str, key: VerifyingKey, **kw: Any) -> AttestationResult:
        calls.append(token)
        return real(token, key, **kw)

    monkeypatch.setattr(replay, "verify_ear", counting)
    return calls


def test_a_release_reuses_its_attest_entrys_verified_token(
    attest_then_release: list[EntryInput], monkeypatch: pytest.MonkeyPatch
) -> None:
    attest, release = attest_then_release
    assert release.entry.result == attest.entry.result
    fresh = _stand_in_replayer().replay(release)  # before counting: what a cold replayer finds
    calls = _counting_verify_ear(monkeypatch)
    r = _stand_in_replayer()
    first, second = r.replay(attest), r.replay(release)
    assert calls == [attest.entry.result]  # verified once, for the attest entry
    assert not first.findings and not second.findings
    assert second == fresh  # a hit gives exactly what verifying afresh gives


def test_a_tampered_copy_of_a_remembered_token_is_verified_afresh(
    attest_then_release: list[EntryInput], monkeypatch: pytest.MonkeyPatch
) -> None:
    attest, release = attest_then_release
    token = release.entry.result
    last = token[-2]
    forged = token[:-2] + ("A" if last != "A" else "B") + token[-1]  # signature edited
    tampered = EntryInput(
        release.index, replace(release.entry, result=forged, raw=b""), release.blobs
    )
    calls = _counting_verify_ear(monkeypatch)
    r = _stand_in_replayer()
    r.replay(attest)
    out = r.replay(tampered)
    assert calls == [token, forged]
    assert [f.code for f in out.findings] == ["ear_invalid"]
    assert out.result_id is None


def test_a_remembered_token_gets_its_time_checks_again(
    attest_then_release: list[EntryInput],
) -> None:
    token, at = attest_then_release[0].entry.result, attest_then_release[0].entry.time
    r = _stand_in_replayer()
    claims = r._verify_result(token, at, allow_expired=False)
    assert claims.expires_at is not None
    assert r._verify_result(token, at, allow_expired=False) is claims  # a hit
    late = datetime.fromtimestamp(claims.expires_at + MAX_CLOCK_SKEW_SECONDS + 1, UTC)
    with pytest.raises(EarError) as exc:
        r._verify_result(token, late, allow_expired=False)
    assert exc.value.reason == "ear_expired"
    assert r._verify_result(token, late, allow_expired=True) is claims
    early = datetime.fromtimestamp(claims.issued_at - MAX_CLOCK_SKEW_SECONDS - 1, UTC)
    with pytest.raises(EarError) as exc:
        r._verify_result(token, early, allow_expired=True)
    assert exc.value.reason == "ear_not_yet_valid"
    naive = datetime.fromtimestamp(claims.issued_at)
    with pytest.raises(InputError):
        r._verify_result(token, naive, allow_expired=False)


def test_remembered_results_are_bounded(
    attest_then_release: list[EntryInput], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "MAX_CACHED_RESULTS", 1)
    r = _stand_in_replayer()
    r.replay(attest_then_release[0])
    r.replay(attest_then_release[1])
    assert len(r._results) == 1
