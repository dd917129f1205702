"""Refused releases in the log: the real broker (real SQLite) logs one ``release_refused``
entry per (result, reason) for results it issued, nothing for tokens it did not, and the
replay reproduces such a log clean; a refusal whose reason disagrees with the log is named."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.audit.bundle import ENTRIES_NAME, EntryRecord, encode_record, parse_entries
from agent.audit.replay import ReplayReport, replay_bundle_file
from agent.broker.service import Broker, ReleaseRefusedError
from agent.broker.store import SqliteBrokerStore
from attest.ear import EarError, issue_ear, verify_ear
from attest.errors import LesseeError, ParseError
from attest.log.entry import EntryKind, LogEntry, RefusalReason, decode_entry
from tests.audit.helpers import (
    MODEL,
    OTHER_KEY,
    STAND_IN_POLICY,
    VERIFIER_KEY,
    Built,
    build,
    evidence,
    finding_codes,
    forge_attest,
    forge_refusal,
    forge_release,
)
from tests.log.helpers import LOG_SIGNER

OTHER_MODEL = "acme-other-1b"
#: The broker's result TTL (the stand-in policy keeps the default) and the EAR's clock skew.
TTL, SKEW = 300, 60


def _policy(**extra: object) -> str:
    return json.dumps(json.loads(STAND_IN_POLICY) | extra, sort_keys=True)


def _register(b: Built, policy_json: str, model_id: str = MODEL) -> None:
    b.broker.register_model(
        model_id=model_id,
        model_version=1,
        data_key=hashlib.sha256(b"data key").digest(),
        policy_json=policy_json,
        manifest_digest=hashlib.sha256(b"manifest").digest(),
    )


def _entries(b: Built) -> list[LogEntry]:
    return [decode_entry(raw) for raw in b.log.entries(0, b.log.size)]


def _refusals(b: Built) -> list[tuple[int, RefusalReason | None]]:
    return [(i, e.reason) for i, e in enumerate(_entries(b)) if e.kind is EntryKind.RELEASE_REFUSED]


def _refuse_twice(b: Built, token: str, reason: str, model_id: str = MODEL) -> None:
    """Refused with ``reason``, twice: the first refusal adds exactly one entry (with that
    reason), the second none."""
    size = b.log.size
    for attempt in range(2):
        b.clock.tick(1)
        with pytest.raises((ReleaseRefusedError, EarError)) as info:
            b.broker.release_key(result=token, model_id=model_id)
        assert isinstance(info.value, LesseeError)
        if isinstance(info.value, EarError):  # refused before the decision: token too old
            assert (info.value.reason, reason) == ("ear_expired", "expired")
        else:
            assert info.value.reason == reason
        assert b.log.size == size + 1, f"attempt {attempt}"
    entry = _entries(b)[size]
    assert entry.kind is EntryKind.RELEASE_REFUSED and entry.reason == reason
    assert entry.result == token and entry.model_id == model_id


def _replay(b: Built, bundle: Path | None = None) -> ReplayReport:
    return replay_bundle_file(
        bundle or b.export(), LOG_SIGNER.verifier(), VERIFIER_KEY.public_key(), appraise=b.appraise
    )


# ---- the broker ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def every_reason(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Every refusal a caller can provoke, each tried twice, and the transient ones followed
    by a real release of the same result once the cause went away."""
    b = build(tmp_path_factory.mktemp("every_reason"), stand_in=True)
    _register(b, STAND_IN_POLICY, OTHER_MODEL)
    # result_used
    used = b.attest(evidence())
    b.release(used)
    _refuse_twice(b, used, "result_used")
    # model_mismatch, then released for its own model
    other = b.attest(evidence())
    _refuse_twice(b, other, "model_mismatch", OTHER_MODEL)
    b.release(other)
    # not_affirming
    _refuse_twice(b, b.attest(evidence(cc_mode_on=False)), "not_affirming")
    # policy_changed, then released once the model's policy is back
    changed = b.attest(evidence())
    _register(b, _policy(name="replay-stand-in-2"))
    _refuse_twice(b, changed, "policy_changed")
    _register(b, STAND_IN_POLICY)
    b.release(changed)
    # manifest_pin: the policy pins another manifest than the registered one
    _register(b, _policy(model_manifest_digests=["00" * 32]))
    _refuse_twice(b, b.attest(evidence()), "manifest_pin")
    _register(b, STAND_IN_POLICY)
    # expired: within the EAR's clock skew (the broker's own check), and past it (verify_ear)
    late = b.attest(evidence())
    b.clock.tick(TTL + 10)
    _refuse_twice(b, late, "expired")
    later = b.attest(evidence())
    b.clock.tick(TTL + SKEW + 10)
    _refuse_twice(b, later, "expired")
    b.export()
    yield b
    b.close()


def test_each_refusal_is_logged_once_with_its_reason(every_reason: Built) -> None:
    assert [reason for _, reason in _refusals(every_reason)] == [
        "result_used",
        "model_mismatch",
        "not_affirming",
        "policy_changed",
        "manifest_pin",
        "expired",
        "expired",
    ]
    for _, e in ((i, _entries(every_reason)[i]) for i, _ in _refusals(every_reason)):
        claims = verify_ear(
            e.result, VERIFIER_KEY.public_key(), at=e.time, allow_expired=True
        )  # the very token the caller sent, one the broker signed
        assert claims.nonce == e.nonce
        assert e.recipient_key_sha256 == hashlib.sha256(claims.enclave_key or b"").digest()


def test_a_log_with_every_refusal_replays_clean(every_reason: Built) -> None:
    report = _replay(every_reason, every_reason.dir / "log.zip")
    assert report.ok, [f.line() for f in report.all_findings]
    summary = report.summary()
    assert (summary["attest"], summary["release"], summary["release_refused"]) == (7, 3, 7)
    refused = [e for e in report.entries if e.kind is EntryKind.RELEASE_REFUSED]
    assert [e.to_json()["reason"] for e in refused] == [r for _, r in _refusals(every_reason)]
    assert report.to_json()["summary"] == summary


def test_unverifiable_tokens_are_not_logged(fresh: Built) -> None:
    """Garbage and results signed by another key are refused as before and leave no entry:
    an unauthenticated caller cannot grow the log."""
    token = fresh.attest(evidence())
    size = fresh.log.size
    claims = verify_ear(token, VERIFIER_KEY.public_key(), at=fresh.clock())
    foreign = issue_ear(claims, OTHER_KEY)
    header, payload, sig = token.split(".")
    for bad in ("a.b.c", "not a token", foreign, f"{header}.{payload}x.{sig}", token + "A"):
        with pytest.raises((EarError, ParseError)):
            fresh.broker.release_key(result=bad, model_id=MODEL)
    assert fresh.log.size == size
    with pytest.raises(ParseError):  # not a lessee EAR although the signature verifies
        fresh.broker.release_key(
            result=issue_ear(type(claims)(claims.submods, claims.issued_at, "x"), VERIFIER_KEY),
            model_id=MODEL,
        )
    assert fresh.log.size == size
    assert _refusals(fresh) == []


def test_the_once_per_reason_bound_survives_a_restart(fresh: Built) -> None:
    _register(fresh, STAND_IN_POLICY, OTHER_MODEL)
    token = fresh.attest(evidence(cc_mode_on=False))
    _refuse_twice(fresh, token, "not_affirming")
    size = fresh.log.size
    restarted = Broker(
        store=SqliteBrokerStore(fresh.dir / "broker.db"),
        wrapper=fresh.broker.wrapper,
        log=fresh.log,
        result_key=VERIFIER_KEY,
        appraiser=fresh.broker.appraiser,
        clock=fresh.clock,
    )
    try:
        with pytest.raises(ReleaseRefusedError):
            restarted.release_key(result=token, model_id=MODEL)
        assert fresh.log.size == size
        with pytest.raises(ReleaseRefusedError) as info:  # another reason: logged, once
            restarted.release_key(result=token, model_id=OTHER_MODEL)
        assert info.value.reason == "model_mismatch"
        assert fresh.log.size == size + 1
    finally:
        restarted.store.close()  # type: ignore[attr-defined]


def test_a_failed_append_leaves_no_claim(fresh: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the refusal cannot be logged the caller gets the log's error (no key either way),
    and the claim is undone, so the next identical refusal is logged."""
    token = fresh.attest(evidence(cc_mode_on=False))
    size = fresh.log.size

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(fresh.log, "append", broken)
        with pytest.raises(OSError, match="disk full"):
            fresh.broker.release_key(result=token, model_id=MODEL)
    assert fresh.log.size == size
    _refuse_twice(fresh, token, "not_affirming")


def _db(b: Built) -> sqlite3.Connection:
    return sqlite3.connect(b.dir / "broker.db", isolation_level=None)


def test_state_loss_refusals_are_logged_and_flagged(fresh: Built) -> None:
    """``unknown_result`` and ``key_mismatch`` cannot happen while the broker's state matches
    its log: provoked by editing the database, they are logged, and the replay names them."""
    lost = fresh.attest(evidence())
    swapped = fresh.attest(evidence())
    ids = [
        verify_ear(t, VERIFIER_KEY.public_key(), at=fresh.clock()).result_id
        for t in (lost, swapped)
    ]
    with _db(fresh) as db:
        db.execute("DELETE FROM results WHERE result_id=?", (ids[0],))
        db.execute(
            "UPDATE results SET enclave_key_digest=? WHERE result_id=?", (b"\x07" * 32, ids[1])
        )
    _refuse_twice(fresh, lost, "unknown_result")
    _refuse_twice(fresh, swapped, "key_mismatch")
    report = _replay(fresh)
    assert finding_codes(report) == {
        ("refusal_reason_inconsistent", 2),
        ("refusal_reason_inconsistent", 3),
    }
    messages = [f.message for f in report.findings]
    assert messages[0].startswith("unknown_result, but the result verifies")
    assert "attest entry 0 issued it" in messages[0]
    assert messages[1].startswith("key_mismatch, but")


# ---- a dishonest broker's refusals -----------------------------------------------------------


def test_not_affirming_refusal_of_an_affirming_result(fresh: Built) -> None:
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_refusal(fresh, token, RefusalReason.NOT_AFFIRMING, nonce=nonce, key=key)
    report = _replay(fresh)
    assert finding_codes(report) == {("refusal_reason_inconsistent", 1)}
    assert "attest entry 0 logged an affirming verdict" in report.findings[0].message


def test_result_used_refusal_without_any_release(fresh: Built) -> None:
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_refusal(fresh, token, RefusalReason.RESULT_USED, nonce=nonce, key=key)
    report = _replay(fresh)
    assert finding_codes(report) == {("refusal_reason_inconsistent", 1)}
    assert "no release of result" in report.findings[0].message


def test_result_used_refusal_just_before_the_winning_release(fresh: Built) -> None:
    """Two callers race one result: the loser's refusal can be committed before the winner's
    release entry. That is consistent; a second release is not."""
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_refusal(fresh, token, RefusalReason.RESULT_USED, nonce=nonce, key=key)
    forge_release(fresh, token, nonce=nonce, key=key)
    assert _replay(fresh).ok
    forge_release(fresh, token, nonce=nonce, key=key)
    assert finding_codes(_replay(fresh)) == {("release_repeated", 3)}


@pytest.mark.parametrize(
    ("logged", "why"),
    [
        (RefusalReason.MODEL_MISMATCH, "issued for the requested model"),
        (RefusalReason.POLICY_CHANGED, "the logged policy is the one the result names"),
        (RefusalReason.EXPIRED, "it had not expired"),
        (RefusalReason.KEY_MISMATCH, "record of the result and its log disagree"),
        (RefusalReason.UNKNOWN_RESULT, "the broker issued it"),
    ],
)
def test_refusal_with_a_reason_the_log_contradicts(
    fresh: Built, logged: RefusalReason, why: str
) -> None:
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_refusal(fresh, token, logged, nonce=nonce, key=key)
    report = _replay(fresh)
    assert finding_codes(report) == {("refusal_reason_inconsistent", 1)}
    assert why in report.findings[0].message


def test_refusal_implies_the_checks_before_it_passed(fresh: Built) -> None:
    """A ``policy_changed`` refusal of a contraindicated result: the broker checks the status
    first, so it would have said ``not_affirming``; a ``result_used`` refusal after expiry
    would have said ``expired``."""
    bad, n1, k1 = forge_attest(fresh, bundle=evidence(cc_mode_on=False))
    _register(fresh, _policy(name="changed"))
    fresh.policy_json = _policy(name="changed")  # forge_refusal logs the model's new policy
    forge_refusal(fresh, bad, RefusalReason.POLICY_CHANGED, nonce=n1, key=k1)  # 1
    fresh.policy_json = STAND_IN_POLICY
    good, n2, k2 = forge_attest(fresh, bundle=evidence())
    forge_release(fresh, good, nonce=n2, key=k2)
    forge_refusal(fresh, good, RefusalReason.RESULT_USED, nonce=n2, key=k2, advance=TTL + 5)  # 4
    report = _replay(fresh)
    assert finding_codes(report) == {
        ("refusal_reason_inconsistent", 1),
        ("refusal_reason_inconsistent", 4),
    }
    assert "logged contraindicated (checked before it)" in report.findings[0].message
    assert "the result had expired" in report.findings[1].message


def test_refusal_of_a_result_never_logged_and_repeated_refusals(fresh: Built) -> None:
    token, nonce, key = forge_attest(fresh, bundle=evidence(cc_mode_on=False), append=False)
    forge_refusal(fresh, token, RefusalReason.NOT_AFFIRMING, nonce=nonce, key=key)  # 0
    token, nonce, key = forge_attest(fresh, bundle=evidence(cc_mode_on=False))  # 1
    forge_refusal(fresh, token, RefusalReason.NOT_AFFIRMING, nonce=nonce, key=key)  # 2
    forge_refusal(fresh, token, RefusalReason.NOT_AFFIRMING, nonce=nonce, key=key)  # 3
    forge_refusal(fresh, token, RefusalReason.NOT_AFFIRMING, nonce=b"\x05" * 32, key=key)  # 4
    codes = finding_codes(_replay(fresh))
    assert ("refusal_without_attest", 0) in codes
    assert ("refusal_repeated", 3) in codes and ("refusal_repeated", 2) not in codes
    assert {("nonce_mismatch", 4), ("refusal_nonce_mismatch", 4)} <= codes
    assert ("refusal_binding_mismatch", 4) in codes


def test_release_after_a_permanent_refusal(fresh: Built) -> None:
    """A result refused as expired is never released later; one refused for another model is
    (the caller's mistake, not the result's)."""
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_refusal(
        fresh, token, RefusalReason.MODEL_MISMATCH, nonce=nonce, key=key, model_id="acme-x"
    )
    forge_refusal(fresh, token, RefusalReason.EXPIRED, nonce=nonce, key=key, advance=TTL + 5)
    forge_release(fresh, token, nonce=nonce, key=key)  # 3
    codes = finding_codes(_replay(fresh))
    assert ("release_after_refusal", 3) in codes and ("release_after_expiry", 3) in codes
    assert not any(entry in (1, 2) for _, entry in codes)
    message = next(f.message for f in _replay(fresh).findings if f.code == "release_after_refusal")
    assert message.startswith("entry 2 refused result") and "expired" in message


def test_a_refusal_edited_to_another_reason(every_reason: Built, tmp_path: Path) -> None:
    """Rewriting a logged refusal's reason breaks its leaf hash (``audit verify``) and the
    replay names the contradiction too."""
    import zipfile

    with zipfile.ZipFile(every_reason.dir / "log.zip") as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    records = list(parse_entries(members[ENTRIES_NAME]))
    index = next(i for i, r in _refusals(every_reason) if r == "not_affirming")
    r = records[index]
    edited = r.data.replace(b'"reason":"not_affirming"', b'"reason":"policy_changed"')
    assert edited != r.data
    records[index] = EntryRecord(r.position, r.index, r.leaf_hash, edited)
    members[ENTRIES_NAME] = b"".join(encode_record(x.index, x.leaf_hash, x.data) for x in records)
    path = tmp_path / "edited.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    codes = finding_codes(_replay(every_reason, path))
    assert ("entry_modified", index) in codes
    assert ("refusal_reason_inconsistent", index) in codes


def test_every_reason_the_broker_refuses_with_is_in_the_closed_set() -> None:
    """``Broker.release_key`` logs ``RefusalReason(exc.reason)``: a new refusal reason must be
    added to the entry format (and to the replay's rules) before the broker can use it."""
    import inspect
    import re

    from agent.broker import service

    used = set(re.findall(r'reason="([a-z_]+)"', inspect.getsource(service.Broker._release)))
    assert used == {r.value for r in RefusalReason}


def test_a_release_racing_a_refusal_for_expiry_is_not_a_finding(fresh: Built) -> None:
    """Review: an honest broker can log a refusal for expiry just *before* the release it had
    already decided in time (the winner's key unwrap and sealing run between its expiry check
    and its append; a KMS makes that slow). The release was logged at a time before the
    result's expiry, so ``release_after_refusal`` for ``expired`` must not accuse the broker:
    only a release decided after such a refusal is one."""
    import threading

    from agent.broker.keywrap import KeyWrapper

    token = fresh.attest(evidence())
    exp = verify_ear(token, VERIFIER_KEY.public_key(), at=fresh.clock()).expires_at
    assert exp is not None
    real = fresh.broker.wrapper
    entered, go = threading.Event(), threading.Event()

    class SlowWrapper(KeyWrapper):
        def __init__(self) -> None:
            pass

        def unwrap(self, wrapped: bytes, *, key_id: str, model_id: str, context: bytes) -> bytes:
            entered.set()
            assert go.wait(30)
            return real.unwrap(wrapped, key_id=key_id, model_id=model_id, context=context)

    fresh.broker.wrapper = SlowWrapper()
    fresh.clock.now = datetime.fromtimestamp(exp - 1, UTC)  # the winner decides in time
    errors: list[BaseException] = []

    def winner() -> None:
        try:
            fresh.broker.release_key(result=token, model_id=MODEL)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=winner)
    t.start()
    assert entered.wait(30)
    fresh.clock.now = datetime.fromtimestamp(exp + 2, UTC)  # a retry arrives just too late
    with pytest.raises(ReleaseRefusedError) as info:
        fresh.broker.release_key(result=token, model_id=MODEL)
    assert info.value.reason == "expired"
    go.set()
    t.join(30)
    assert not errors
    kinds = [(e.kind, e.reason) for e in _entries(fresh)]
    assert kinds[-2:] == [
        (EntryKind.RELEASE_REFUSED, RefusalReason.EXPIRED),
        (EntryKind.RELEASE, None),
    ]
    assert finding_codes(_replay(fresh)) == set()
