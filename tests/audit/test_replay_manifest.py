"""Which sealed model a release was for: the real broker (real SQLite state and log) writes
version-2 release and refusal entries naming the registered model version and manifest
digest, and the replay judges the broker's ``manifest_pin`` rule from them; version-1 entries
(older logs) replay as before, the pin undecidable for them."""

from __future__ import annotations

import hashlib
import json

import pytest

from agent.audit.replay import ReplayReport, replay_bundle_file
from agent.broker.service import ReleaseRefusedError
from attest.log.entry import EntryKind, LogEntry, RefusalReason, decode_entry
from tests.audit.helpers import (
    MANIFEST,
    MODEL,
    STAND_IN_POLICY,
    VERIFIER_KEY,
    Built,
    evidence,
    finding_codes,
    forge_attest,
    forge_refusal,
    forge_release,
)
from tests.log.helpers import LOG_SIGNER

OTHER_MANIFEST = hashlib.sha256(b"another sealed manifest").digest()


def _policy(**extra: object) -> str:
    return json.dumps(json.loads(STAND_IN_POLICY) | extra, sort_keys=True)


#: The stand-in policy pinning the registered manifest, and pinning only another one.
PINS_IT = _policy(model_manifest_digests=[OTHER_MANIFEST.hex(), MANIFEST.hex()])
PINS_OTHER = _policy(model_manifest_digests=[OTHER_MANIFEST.hex()])


def _register(b: Built, policy_json: str, *, version: int = 1, manifest: bytes = MANIFEST) -> None:
    b.broker.register_model(
        model_id=MODEL,
        model_version=version,
        data_key=hashlib.sha256(b"data key").digest(),
        policy_json=policy_json,
        manifest_digest=manifest,
    )
    b.policy_json = policy_json  # what the forged entries log as the model's policy


def _entries(b: Built) -> list[LogEntry]:
    return [decode_entry(raw) for raw in b.log.entries(0, b.log.size)]


def _replay(b: Built) -> ReplayReport:
    return replay_bundle_file(
        b.export(), LOG_SIGNER.verifier(), VERIFIER_KEY.public_key(), appraise=b.appraise
    )


# ---- the broker ------------------------------------------------------------------------------


def test_the_broker_logs_which_sealed_model_it_released(fresh: Built) -> None:
    """Each release entry is version 2 and names the model version and manifest registered
    when it was decided (the ones the agent is told in ``ReleaseOutcome``)."""
    first = fresh.attest(evidence())
    fresh.clock.tick()
    out1 = fresh.broker.release_key(result=first, model_id=MODEL)
    _register(fresh, STAND_IN_POLICY, version=2**32 - 1, manifest=OTHER_MANIFEST)
    second = fresh.attest(evidence())
    fresh.clock.tick()
    out2 = fresh.broker.release_key(result=second, model_id=MODEL)
    releases = [e for e in _entries(fresh) if e.kind is EntryKind.RELEASE]
    assert [(e.version, e.model_version, e.manifest_sha256) for e in releases] == [
        (2, 1, MANIFEST),
        (2, 2**32 - 1, OTHER_MANIFEST),
    ]
    assert [(o.model_version, o.manifest_digest) for o in (out1, out2)] == [
        (1, MANIFEST),
        (2**32 - 1, OTHER_MANIFEST),
    ]
    assert all(e.kind is EntryKind.RELEASE or e.version == 1 for e in _entries(fresh))
    report = _replay(fresh)
    assert report.ok, [f.line() for f in report.all_findings]
    logged = [e.to_json() for e in report.entries if e.kind is EntryKind.RELEASE]
    assert [(j["model_version"], j["manifest_sha256"]) for j in logged] == [
        (1, MANIFEST.hex()),
        (2**32 - 1, OTHER_MANIFEST.hex()),
    ]
    attest = next(e.to_json() for e in report.entries if e.kind is EntryKind.ATTEST)
    assert attest["model_version"] is None and attest["manifest_sha256"] is None


def test_a_pinned_manifest_is_released_and_replays_clean(fresh: Built) -> None:
    _register(fresh, PINS_IT, version=3)
    fresh.release(fresh.attest(evidence()))
    release = _entries(fresh)[-1]
    assert (release.kind, release.model_version, release.manifest_sha256) == (
        EntryKind.RELEASE,
        3,
        MANIFEST,
    )
    report = _replay(fresh)
    assert report.ok, [f.line() for f in report.all_findings]
    assert report.entries[-1].manifest_admitted is True


def test_a_manifest_pin_refusal_is_logged_v2_and_replays_clean(fresh: Built) -> None:
    """The broker refuses a model whose registered manifest its policy does not pin; the
    refusal names that manifest, and the replay finds the reason consistent with the log."""
    _register(fresh, PINS_OTHER, version=4)
    token = fresh.attest(evidence())
    fresh.clock.tick()
    with pytest.raises(ReleaseRefusedError) as info:
        fresh.broker.release_key(result=token, model_id=MODEL)
    assert info.value.reason == "manifest_pin"
    refusal = _entries(fresh)[-1]
    assert refusal.kind is EntryKind.RELEASE_REFUSED and refusal.version == 2
    assert (refusal.reason, refusal.model_version, refusal.manifest_sha256) == (
        RefusalReason.MANIFEST_PIN,
        4,
        MANIFEST,
    )
    report = _replay(fresh)
    assert report.ok, [f.line() for f in report.all_findings]
    assert report.entries[-1].manifest_admitted is False


def test_refusals_for_other_reasons_name_the_model_record_too(fresh: Built) -> None:
    """A refusal before the pin is checked (here ``not_affirming``) still logs the model
    record the broker looked at; an unknown model is refused before any and logs nothing."""
    _register(fresh, STAND_IN_POLICY, version=9)
    token = fresh.attest(evidence(cc_mode_on=False))
    fresh.clock.tick()
    with pytest.raises(ReleaseRefusedError):
        fresh.broker.release_key(result=token, model_id=MODEL)
    refusal = _entries(fresh)[-1]
    assert (refusal.reason, refusal.model_version, refusal.manifest_sha256) == (
        RefusalReason.NOT_AFFIRMING,
        9,
        MANIFEST,
    )
    size = fresh.log.size
    with pytest.raises(Exception, match="unknown model"):
        fresh.broker.release_key(result=token, model_id="acme-unknown")
    assert fresh.log.size == size
    assert _replay(fresh).ok


# ---- a dishonest broker ----------------------------------------------------------------------


def test_release_of_a_manifest_the_policy_does_not_pin(fresh: Built) -> None:
    """A broker that skipped ``manifest_pin`` released a manifest its policy does not list."""
    _register(fresh, PINS_OTHER)
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_release(fresh, token, nonce=nonce, key=key, manifest=MANIFEST, model_version=5)  # 1
    report = _replay(fresh)
    assert finding_codes(report) == {("release_manifest_not_pinned", 1)}
    message = report.findings[0].message
    assert MANIFEST.hex() in message and "model version 5" in message


def test_release_of_a_pinned_manifest_or_without_a_pin_is_clean(fresh: Built) -> None:
    _register(fresh, PINS_IT)
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_release(fresh, token, nonce=nonce, key=key, manifest=MANIFEST)
    _register(fresh, STAND_IN_POLICY)
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_release(fresh, token, nonce=nonce, key=key, manifest=OTHER_MANIFEST)
    report = _replay(fresh)
    assert report.ok, [f.line() for f in report.all_findings]


def test_a_version_1_release_leaves_the_pin_undecided(fresh: Built) -> None:
    """An older broker's release does not name its manifest: nothing to judge, no finding,
    even under a policy that pins manifests."""
    _register(fresh, PINS_OTHER)
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_release(fresh, token, nonce=nonce, key=key)
    assert _entries(fresh)[-1].version == 1
    report = _replay(fresh)
    assert report.ok, [f.line() for f in report.all_findings]
    assert report.entries[-1].manifest_admitted is None
    assert report.entries[-1].to_json()["manifest_sha256"] is None


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        (PINS_IT, "pins the logged one"),
        (STAND_IN_POLICY, "pins no manifests"),
    ],
)
def test_manifest_pin_refusal_the_log_contradicts(fresh: Built, policy: str, why: str) -> None:
    _register(fresh, policy)
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_refusal(fresh, token, RefusalReason.MANIFEST_PIN, nonce=nonce, key=key, manifest=MANIFEST)
    report = _replay(fresh)
    assert finding_codes(report) == {("refusal_reason_inconsistent", 1)}
    assert report.findings[0].message.startswith("manifest_pin, but")
    assert why in report.findings[0].message


def test_manifest_pin_refusal_consistent_with_the_log(fresh: Built) -> None:
    _register(fresh, PINS_OTHER)
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_refusal(fresh, token, RefusalReason.MANIFEST_PIN, nonce=nonce, key=key, manifest=MANIFEST)
    assert _replay(fresh).ok


def test_a_version_1_manifest_pin_refusal_is_not_judged(fresh: Built) -> None:
    """As before version 2: the manifest is not logged, so the reason is not decidable."""
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_refusal(fresh, token, RefusalReason.MANIFEST_PIN, nonce=nonce, key=key)
    assert _entries(fresh)[-1].version == 1
    assert _replay(fresh).ok


def test_a_later_reason_implies_the_pin_passed(fresh: Built) -> None:
    """``result_used`` is checked after ``manifest_pin``: a refusal for it under a policy that
    does not pin the logged manifest would have been ``manifest_pin``. ``expired`` implies
    nothing (it is also logged before any check), and ``policy_changed`` comes before the pin."""
    _register(fresh, PINS_OTHER)
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_release(fresh, token, nonce=nonce, key=key)  # 1: version 1, the pin undecided
    forge_refusal(
        fresh, token, RefusalReason.RESULT_USED, nonce=nonce, key=key, manifest=MANIFEST
    )  # 2
    forge_refusal(
        fresh, token, RefusalReason.EXPIRED, nonce=nonce, key=key, manifest=MANIFEST, advance=400
    )  # 3
    other, n2, k2 = forge_attest(fresh, bundle=evidence())  # 4, under PINS_OTHER
    _register(fresh, _policy(name="changed", model_manifest_digests=[OTHER_MANIFEST.hex()]))
    forge_refusal(
        fresh, other, RefusalReason.POLICY_CHANGED, nonce=n2, key=k2, manifest=MANIFEST
    )  # 5
    report = _replay(fresh)
    assert finding_codes(report) == {("refusal_reason_inconsistent", 2)}
    assert report.findings[0].message == (
        "result_used, but the logged policy does not pin the logged manifest (checked before it)"
    )


def test_a_log_mixing_version_1_and_version_2_releases_replays_clean(fresh: Built) -> None:
    """An older broker's entries followed by a newer one's, in one log: both replay clean."""
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_release(fresh, token, nonce=nonce, key=key)  # version 1, as an older broker
    token, nonce, key = forge_attest(fresh, bundle=evidence(cc_mode_on=False))
    forge_refusal(fresh, token, RefusalReason.NOT_AFFIRMING, nonce=nonce, key=key)
    fresh.release(fresh.attest(evidence()))  # version 2, the real broker
    versions = [(e.kind, e.version) for e in _entries(fresh)]
    assert versions == [
        (EntryKind.ATTEST, 1),
        (EntryKind.RELEASE, 1),
        (EntryKind.ATTEST, 1),
        (EntryKind.RELEASE_REFUSED, 1),
        (EntryKind.ATTEST, 1),
        (EntryKind.RELEASE, 2),
    ]
    report = _replay(fresh)
    assert report.ok, [f.line() for f in report.all_findings]
    assert report.summary()["release"] == 2


def test_a_version_1_release_after_a_version_2_one_is_a_downgrade(fresh: Built) -> None:
    """A broker that writes version 2 could log one release as version 1 to hide which
    manifest it released (the pin is undecidable for version 1): the downgrade itself is the
    finding, for releases and refusals alike, and the release still gets no pin verdict."""
    _register(fresh, PINS_OTHER)
    refused = fresh.attest(evidence())  # 0
    fresh.clock.tick()
    with pytest.raises(ReleaseRefusedError):  # 1: the real broker's version-2 refusal
        fresh.broker.release_key(result=refused, model_id=MODEL)
    token, nonce, key = forge_attest(fresh, bundle=evidence())  # 2
    forge_release(fresh, token, nonce=nonce, key=key)  # 3: version 1, hides the manifest
    token, nonce, key = forge_attest(fresh, bundle=evidence(cc_mode_on=False))  # 4
    forge_refusal(fresh, token, RefusalReason.NOT_AFFIRMING, nonce=nonce, key=key)  # 5: v1
    versions = [(e.kind, e.version) for e in _entries(fresh)]
    assert versions[1] == (EntryKind.RELEASE_REFUSED, 2)
    assert versions[3] == (EntryKind.RELEASE, 1) and versions[5] == (EntryKind.RELEASE_REFUSED, 1)
    report = _replay(fresh)
    assert finding_codes(report) == {("entry_version_downgrade", 3), ("entry_version_downgrade", 5)}
    assert "after the version-2 entry 1" in report.findings[0].message
    assert [r.entry_version for r in report.entries] == [1, 2, 1, 1, 1, 1]
