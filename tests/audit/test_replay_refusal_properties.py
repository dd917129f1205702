"""Properties of the replay's cross-entry refusal checks (``cross_check``, step 8) over
generated logs: attest, release and ``release_refused`` entries for a few results, with random
reasons, times, statuses, models and keys.

Whatever the log: the checks never raise; a refusal never counts as a release (the release
findings of a log are those of the same log with its refusals removed, plus only
``release_after_refusal``); ``refusal_repeated`` is raised exactly for a repeated (result,
reason) pair; and ``release_after_refusal`` exactly for a release after a refusal of its result
for a permanent reason (for ``expired``, only a release logged at or after that refusal's time).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.audit.replay import PERMANENT_REFUSALS, EntryReplay, cross_check
from agent.audit.verify import Finding
from attest.ear import Status
from attest.log.entry import EntryKind, RefusalReason

T0 = datetime(2026, 12, 1, tzinfo=UTC)
RESULTS = ("r0", "r1", "r2")
KEYS = (b"\x01" * 32, b"\x02" * 32)
MODELS = ("m", "n")


@st.composite
def entry(draw: st.DrawFn, index: int) -> EntryReplay:
    kind = draw(st.sampled_from(list(EntryKind)))
    result = draw(st.sampled_from(RESULTS) | st.none())
    nonce = bytes([draw(st.integers(0, 2))]) * 16
    common = {
        "index": index,
        "kind": kind,
        "time": T0 + timedelta(seconds=draw(st.integers(0, 600))),
        "nonce": nonce,
        "binding": nonce * 2,
        "result_id": result,
        "result_sha256": None if result is None else result.encode() * 8,
        "model_id": draw(st.sampled_from(MODELS)),
        "expires_at": draw(st.none() | st.integers(0, 900).map(lambda s: int(T0.timestamp()) + s)),
    }
    if kind is EntryKind.ATTEST:
        status = draw(st.sampled_from(list(Status)) | st.none())
        return EntryReplay(
            **common,  # type: ignore[arg-type]
            enclave_key_sha256=draw(st.sampled_from(KEYS)),
            logged_status=status,
            recomputed_status=draw(st.sampled_from([status, Status.AFFIRMING, None])),
        )
    return EntryReplay(
        **common,  # type: ignore[arg-type]
        recipient_key_sha256=draw(st.sampled_from(KEYS)),
        reason=draw(st.sampled_from(list(RefusalReason)))
        if kind is EntryKind.RELEASE_REFUSED
        else None,
        result_model_id=draw(st.sampled_from(MODELS)),
        policy_matches=draw(st.sampled_from([True, False, None])),
    )


@st.composite
def logs(draw: st.DrawFn) -> list[EntryReplay]:
    n = draw(st.integers(0, 14))
    return [draw(entry(i)) for i in range(n)]


def _codes(findings: Sequence[Finding], prefix: str) -> Counter[tuple[str, int | None]]:
    return Counter((f.code, f.entry) for f in findings if f.code.startswith(prefix))


@settings(max_examples=600, deadline=None)
@given(log=logs())
def test_refusal_checks_over_generated_logs(log: list[EntryReplay]) -> None:
    findings = cross_check(log)
    for f in findings:
        assert f.entry is not None and 0 <= f.entry < len(log)
        kind = log[f.entry].kind
        if f.code.startswith("refusal_"):
            assert kind is EntryKind.RELEASE_REFUSED, f
        if f.code.startswith("release_"):
            assert kind is EntryKind.RELEASE, f

    # Refusals never count as releases: removing them changes no release finding but
    # release_after_refusal.
    without = cross_check([e for e in log if e.kind is not EntryKind.RELEASE_REFUSED])
    got = _codes(findings, "release_")
    got = Counter({k: v for k, v in got.items() if k[0] != "release_after_refusal"})
    assert got == _codes(without, "release_")

    # refusal_repeated exactly for a repeated (result, reason); release_after_refusal exactly
    # for a release after a permanent refusal of its result (one finding per such reason).
    seen: set[tuple[str, RefusalReason]] = set()
    #: result -> permanent reason -> time of its first refusal (an ``expired`` refusal counts
    #: only against a release logged at or after that time: an in-time release can be appended
    #: just after a concurrent caller's expiry refusal).
    permanent: dict[str, dict[RefusalReason, datetime]] = {}
    want_repeated: Counter[tuple[str, int | None]] = Counter()
    want_after: Counter[tuple[str, int | None]] = Counter()
    for e in log:
        if e.result_id is None:
            continue
        if e.kind is EntryKind.RELEASE_REFUSED and e.reason is not None:
            if (e.result_id, e.reason) in seen:
                want_repeated[("refusal_repeated", e.index)] += 1
            seen.add((e.result_id, e.reason))
            if e.reason in PERMANENT_REFUSALS:
                permanent.setdefault(e.result_id, {}).setdefault(e.reason, e.time)
        elif e.kind is EntryKind.RELEASE:
            n = sum(
                1
                for reason, at in permanent.get(e.result_id, {}).items()
                if reason is not RefusalReason.EXPIRED or e.time >= at
            )
            if n:
                want_after[("release_after_refusal", e.index)] += n
    assert _codes(findings, "refusal_repeated") == want_repeated
    assert _codes(findings, "release_after_refusal") == want_after
