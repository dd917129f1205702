"""``lessee audit replay`` over logs written by the real broker: clean logs reproduce every
verdict; each kind of tampering or dishonest decision is caught and names the entry."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.audit import replay as replay_module
from agent.audit.bundle import ENTRIES_NAME, EntryRecord, encode_record, parse_entries
from agent.audit.replay import ReplayReport, replay_bundle_file
from agent.broker.service import ReleaseRefusedError
from agent.cli.main import main
from attest.bundle import EvidenceBundle
from attest.ear import Status, Submodule
from attest.log.checkpoint import format_checkpoint
from attest.log.note import sign_note
from tests.audit.helpers import (
    OTHER_KEY,
    VERIFIER_KEY,
    Built,
    build,
    enclave_key,
    evidence,
    finding_codes,
    forge_attest,
    forge_release,
    public_pem,
    real_policy,
)
from tests.log.helpers import LOG_SIGNER

Members = dict[str, bytes]


# ---- logs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Three attest entries on the real vectors, appraised for real (all contraindicated), and
    the broker's logged refusal to release a key for the last one."""
    b = build(tmp_path_factory.mktemp("real"), stand_in=False)
    for _ in range(3):
        token = b.attest(evidence())
    with pytest.raises(ReleaseRefusedError) as info:
        b.release(token)
    assert info.value.reason == "not_affirming"
    b.export()
    yield b
    b.close()


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """attest (affirming) + release, attest (CC off: contraindicated) + its logged refusal,
    attest (affirming)."""
    b = build(tmp_path_factory.mktemp("stand_in"), stand_in=True)
    b.release(b.attest(evidence()))
    refused = b.attest(evidence(cc_mode_on=False))
    with pytest.raises(ReleaseRefusedError):
        b.release(refused)
    b.attest(evidence())
    b.export()
    yield b
    b.close()


def _replay(b: Built, bundle: Path | None = None, **kw: object) -> ReplayReport:
    return replay_bundle_file(
        bundle or b.export(),
        LOG_SIGNER.verifier(),
        VERIFIER_KEY.public_key(),
        appraise=b.appraise,
        **kw,
    )


def _cli(b: Built, bundle: Path, *extra: str) -> tuple[int, dict[str, object]]:
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(
            [
                "audit",
                "replay",
                str(bundle),
                "--log-key",
                str(b.dir / "log.vkey"),
                "--verifier-key",
                str(b.dir / "verifier.pem"),
                "--json",
                "--quiet",
                *extra,
            ]
        )
    text = buf.getvalue()
    return rc, (json.loads(text) if text.strip() else {})


# ---- clean logs ------------------------------------------------------------------------------


def test_real_log_replays_clean_through_the_cli(real: Built) -> None:
    rc, report = _cli(real, real.dir / "log.zip", "--workers", "1")
    assert rc == 0, report["findings"]
    assert report["ok"] is True and report["findings"] == []
    summary = report["summary"]
    assert summary == {
        "entries": 4,
        "replayed": 4,
        "attest": 3,
        "release": 0,
        "release_refused": 1,
        "verdicts_reproduced": 3,
        "affirming": 0,
        "findings": 0,
    }
    entries = report["entries"]
    assert isinstance(entries, list)
    # The real vectors were not made in a broker session: contraindicated, and reproducibly so.
    assert {e["logged_status"] for e in entries} == {"contraindicated"}
    assert all(e["recomputed_status"] == "contraindicated" for e in entries[:3])
    assert entries[3]["kind"] == "release_refused" and entries[3]["reason"] == "not_affirming"
    assert entries[3]["recomputed_status"] is None  # a refusal re-appraises nothing


def test_real_log_uses_the_archived_broker_rims(real: Built) -> None:
    report = _replay(real, real.dir / "log.zip")
    assert report.ok and all(e.verdict_equal for e in report.entries[:3])
    with zipfile.ZipFile(real.dir / "log.zip") as z:
        blobs = {n for n in z.namelist() if n.startswith("blobs/")}
    rim_digests = {
        f"blobs/{hashlib.sha256(r).hexdigest()}" for r in evidence(with_rims=True).gpus[0].rims
    }
    assert rim_digests <= blobs  # the broker's own RIMs are archived and replay re-used them


def test_stand_in_log_with_release_replays_clean(stand_in: Built) -> None:
    report = _replay(stand_in, stand_in.dir / "log.zip")
    assert report.ok, [f.line() for f in report.all_findings]
    assert [(e.kind.value, e.logged_status) for e in report.entries] == [
        ("attest", Status.AFFIRMING),
        ("release", Status.AFFIRMING),
        ("attest", Status.CONTRAINDICATED),
        ("release_refused", Status.CONTRAINDICATED),
        ("attest", Status.AFFIRMING),
    ]
    assert report.entries[3].reason == "not_affirming"
    assert report.summary()["verdicts_reproduced"] == 3


@pytest.fixture
def all_on_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk on the workers (``BRIDGE_POOL_START`` off): these logs are far too small to
    outlast the pool's start, so by default this process would replay them all itself (the
    hand-over has its own test below)."""
    monkeypatch.setattr(replay_module, "BRIDGE_POOL_START", False)


@pytest.mark.usefixtures("all_on_workers")
def test_serial_and_parallel_replays_are_identical(real: Built, stand_in: Built) -> None:
    for b in (real, stand_in):
        bundle = b.dir / "log.zip"
        seen: list[int] = []
        serial = _replay(b, bundle, workers=1)
        parallel = _replay(b, bundle, workers=2, on_progress=seen.append)
        assert parallel.to_json() == serial.to_json()
        assert parallel.entries == serial.entries
        assert sum(seen) == len(serial.entries)


def test_bridged_replay_hands_over_to_the_workers(
    stand_in: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One entry per chunk, the pool started after the first and reported up after the second:
    those two are replayed here, the rest by the workers, in log order all the same."""
    from agent.audit.pool import BackgroundPool

    asked: list[bool] = []

    def ready(self: BackgroundPool) -> bool:
        if not asked:
            asked.append(False)
            return False
        self.wait_started()
        asked.append(True)
        return True

    monkeypatch.setattr(replay_module, "CHUNK_ENTRIES", 1)
    monkeypatch.setattr(replay_module, "POOL_START_BREAK_EVEN_S", 0.0)  # start it at once
    monkeypatch.setattr(BackgroundPool, "ready", ready)
    bundle = stand_in.dir / "log.zip"
    serial = _replay(stand_in, bundle, workers=1)
    parallel = _replay(stand_in, bundle, workers=2)
    assert asked == [False, True]  # asked once per chunk until the pool was up, then no more
    assert parallel.to_json() == serial.to_json()


def test_a_short_log_starts_no_pool(stand_in: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five entries, replayed here in far less than the pool's start: no pool at all."""
    from agent.audit.pool import BackgroundPool

    def no_pool(*args: object, **kwargs: object) -> BackgroundPool:
        raise AssertionError("a pool was started for a short log")

    monkeypatch.setattr(replay_module, "BackgroundPool", no_pool)
    bundle = stand_in.dir / "log.zip"
    assert _replay(stand_in, bundle, workers=2).to_json() == _replay(stand_in, bundle).to_json()


def test_a_log_timed_as_long_starts_the_pool(
    stand_in: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rest of the log is estimated from the entries timed so far: with a clock that says
    each entry took a second, the pool is started after the first entry (whether it comes up in
    time to take work is the hand-over test's subject); the short log above, timed for real,
    starts none."""
    import itertools
    import types

    from agent.audit.pool import BackgroundPool

    started: list[int] = []

    class Spy(BackgroundPool):
        def __init__(self, size: int, **kwargs: Any) -> None:
            started.append(size)
            super().__init__(size, **kwargs)

    ticks = itertools.count()
    monkeypatch.setattr(replay_module, "BackgroundPool", Spy)
    monkeypatch.setattr(replay_module, "CHUNK_ENTRIES", 1)
    monkeypatch.setattr(
        replay_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks)))
    )
    bundle = stand_in.dir / "log.zip"
    parallel = _replay(stand_in, bundle, workers=2)
    assert started == [2]
    assert parallel.to_json() == _replay(stand_in, bundle).to_json()


def test_replay_without_worker_processes(
    stand_in: Built, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where no process can be started, a bridged replay finishes here with the same report and
    says why; with every entry meant for the workers, the start failure is the error."""
    from tests.audit.test_pool import _NoProcesses

    monkeypatch.setattr(replay_module, "_pool_context", _NoProcesses)
    monkeypatch.setattr(replay_module, "CHUNK_ENTRIES", 1)
    monkeypatch.setattr(replay_module, "POOL_START_BREAK_EVEN_S", 0.0)  # a pool is tried
    bundle = stand_in.dir / "log.zip"
    serial = _replay(stand_in, bundle, workers=1)
    with caplog.at_level("WARNING", logger="agent.audit.replay"):
        assert _replay(stand_in, bundle, workers=2).to_json() == serial.to_json()
    assert "worker pool did not start (OSError)" in caplog.text
    monkeypatch.setattr(replay_module, "BRIDGE_POOL_START", False)
    with pytest.raises(OSError, match="no processes here"):
        _replay(stand_in, bundle, workers=2)


@pytest.mark.usefixtures("all_on_workers")
def test_parallel_finds_the_same_findings(fresh: Built) -> None:
    token = fresh.attest(evidence())
    forge_attest(fresh, bundle=evidence(cc_mode_on=False), claim_status=Status.AFFIRMING)
    forge_release(fresh, token, nonce=b"\x01" * 32, key=enclave_key())
    bundle = fresh.export()
    serial, parallel = _replay(fresh, bundle), _replay(fresh, bundle, workers=2)
    assert not serial.ok
    assert parallel.to_json() == serial.to_json()


# ---- tampering caught by audit verify (replay runs it first) ---------------------------------


def _members(path: Path) -> Members:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _tamper(b: Built, name: str, change: Callable[[Members], None]) -> Path:
    m = _members(b.dir / "log.zip")
    change(m)
    path = b.dir / f"{name}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for member, data in m.items():
            z.writestr(zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return path


def _records(m: Members) -> list[EntryRecord]:
    return list(parse_entries(m[ENTRIES_NAME]))


def _set_records(m: Members, recs: list[EntryRecord]) -> None:
    m[ENTRIES_NAME] = b"".join(encode_record(r.index, r.leaf_hash, r.data) for r in recs)


def test_edited_entry(stand_in: Built) -> None:
    def change(m: Members) -> None:
        recs = _records(m)
        r = recs[1]
        recs[1] = EntryRecord(r.position, r.index, r.leaf_hash, r.data.replace(b"acme-", b"evil-"))
        _set_records(m, recs)

    report = _replay(stand_in, _tamper(stand_in, "edited", change))
    codes = finding_codes(report)
    assert ("entry_modified", 1) in codes
    # The edit changed the release's model id: replay names that too.
    assert ("release_model_mismatch", 1) in codes


def test_deleted_entry(stand_in: Built) -> None:
    def change(m: Members) -> None:
        recs = _records(m)
        del recs[0]
        _set_records(m, recs)

    report = _replay(stand_in, _tamper(stand_in, "deleted", change))
    codes = finding_codes(report)
    assert ("entry_missing", 0) in codes
    # Without its attest entry the release has nothing to stand on.
    assert ("release_without_attest", 1) in codes


def test_reordered_entries(stand_in: Built) -> None:
    def change(m: Members) -> None:
        recs = _records(m)
        recs[0], recs[1] = recs[1], recs[0]
        _set_records(m, recs)

    report = _replay(stand_in, _tamper(stand_in, "reordered", change))
    codes = finding_codes(report)
    assert ("entry_out_of_place", 0) in codes and ("entry_out_of_place", 1) in codes
    assert ("release_without_attest", 1) in codes  # the release now precedes its attest


def test_forked_checkpoint(stand_in: Built) -> None:
    def change(m: Members) -> None:
        cp = format_checkpoint(LOG_SIGNER.name, 2, hashlib.sha256(b"fork").digest())
        m["checkpoints/00000000000000000099.note"] = sign_note(cp.text, [LOG_SIGNER])

    report = _replay(stand_in, _tamper(stand_in, "fork", change))
    assert ("checkpoint_fork", None) in {(f.code, f.entry) for f in report.audit.findings}
    assert not report.ok and report.findings == []  # the decisions themselves still replay


# ---- replaced blobs --------------------------------------------------------------------------


def _blob_of(b: Built, role_data: bytes) -> str:
    return f"blobs/{hashlib.sha256(role_data).hexdigest()}"


def test_replaced_evidence_blob(real: Built) -> None:
    name = _blob_of(real, evidence().to_json())

    def change(m: Members) -> None:
        m[name] = evidence(cc_mode_on=False).to_json()

    report = _replay(real, _tamper(real, "evidence", change))
    codes = finding_codes(report)
    assert {("blob_digest_mismatch", i) for i in range(3)} <= codes
    assert {("replay_blob_unusable", i) for i in range(3)} <= codes
    assert all(e.recomputed_status is None for e in report.entries)  # never appraised


def test_replaced_policy_blob(real: Built) -> None:
    name = _blob_of(real, real.policy_json.encode())

    def change(m: Members) -> None:
        m[name] = real_policy(name="another").encode()

    report = _replay(real, _tamper(real, "policy", change))
    codes = finding_codes(report)
    assert ("blob_digest_mismatch", 0) in codes and ("replay_blob_unusable", 0) in codes
    message = next(f.message for f in report.findings if f.code == "replay_blob_unusable")
    assert message.startswith("policy:")


def test_result_names_another_policy_than_the_logged_one(fresh: Built) -> None:
    """The broker appraised under one policy and logged another document."""
    forge_attest(fresh, bundle=evidence(), claimed_policy_json=real_policy())
    report = _replay(fresh)
    codes = {c for c, _ in finding_codes(report)}
    assert ("policy_digest_mismatch", 0) in finding_codes(report)
    assert codes == {"policy_digest_mismatch", "verdict_mismatch"}  # policy ids differ too


# ---- dishonest decisions ---------------------------------------------------------------------


def test_release_without_affirming_result(real: Built, tmp_path: Path) -> None:
    b = build(tmp_path, stand_in=False)
    try:
        token = b.attest(evidence())
        record = b.log.entries(0, 1)[0]
        entry = json.loads(record)
        forge_release(b, token, nonce=bytes.fromhex(entry["nonce"]), key=_enclave_key_of(token))
        report = _replay(b)
    finally:
        b.close()
    assert finding_codes(report) == {("release_not_affirming", 1)}
    assert "attest entry 0 logged contraindicated" in report.findings[0].message


def test_release_of_a_result_never_logged(fresh: Built) -> None:
    fresh.attest(evidence())
    # An affirming result, validly signed, that no attest entry recorded.
    token, nonce, key = forge_attest(fresh, bundle=evidence(), append=False)
    forge_release(fresh, token, nonce=nonce, key=key)
    report = _replay(fresh)
    assert finding_codes(report) == {("release_without_attest", 1)}


def test_release_checks_key_model_expiry_and_repeats(fresh: Built) -> None:
    token, nonce, key = forge_attest(fresh, bundle=evidence())
    forge_release(fresh, token, nonce=nonce, key=key)  # 1: fine
    forge_release(fresh, token, nonce=nonce, key=key)  # 2: second release of the same result
    forge_release(fresh, token, nonce=nonce, key=key, model_id="acme-other")  # 3
    forge_release(fresh, token, nonce=nonce, key=key, recipient=b"\x07" * 32)  # 4
    forge_release(fresh, token, nonce=nonce, key=key, advance=300)  # 5: after exp, within skew
    forge_release(fresh, token, nonce=nonce, key=key, advance=3600)  # 6: long after exp
    codes = finding_codes(_replay(fresh))
    assert not any(e == 1 for _, e in codes)
    assert ("release_repeated", 2) in codes
    assert ("release_model_mismatch", 3) in codes
    assert ("release_key_mismatch", 4) in codes
    assert ("release_after_expiry", 5) in codes
    assert ("release_after_expiry", 6) in codes


def test_a_release_long_after_expiry_is_still_cross_checked(fresh: Built) -> None:
    """An expired token is still a token the broker signed: a release long after its ``exp``
    must still be checked against the attest entries, so a stale release of a result that no
    attest entry logged is reported as both (not only as late)."""
    fresh.attest(evidence())
    token, nonce, key = forge_attest(fresh, bundle=evidence(), append=False)
    forge_release(fresh, token, nonce=nonce, key=key, advance=3600)
    codes = finding_codes(_replay(fresh))
    assert ("release_after_expiry", 1) in codes
    assert ("release_without_attest", 1) in codes


def test_verdict_differs_from_recomputation(real: Built, tmp_path: Path) -> None:
    """An affirming result, signed with the pinned key, for evidence that re-appraises as
    contraindicated: only the recomputation can catch it."""
    b = build(tmp_path, stand_in=False)
    try:
        b.attest(evidence())
        forge_attest(b, bundle=evidence(), claim_status=Status.AFFIRMING, rims=_real_rims())
        report = _replay(b)
    finally:
        b.close()
    assert finding_codes(report) == {("verdict_mismatch", 1)}
    msg = report.findings[0].message
    assert "overall status logged affirming, recomputed contraindicated" in msg
    assert "cpu0 status logged affirming, recomputed contraindicated" in msg
    assert report.entries[1].logged_status is Status.AFFIRMING
    assert report.entries[1].recomputed_status is Status.CONTRAINDICATED


def test_verdict_with_a_dropped_finding(fresh: Built) -> None:
    """Same statuses everywhere, but the logged result hides one finding: not equal."""
    bad = EvidenceBundle(
        cpu=evidence().cpu, gpus=evidence().gpus, cc_mode_on=False, devtools_on=True
    )

    def drop_one(submods: dict[str, Submodule]) -> dict[str, Submodule]:
        gpu = submods["gpu0"]
        findings = gpu.extra["ear.lessee.findings"]
        assert len(findings) == 2
        extra = {**gpu.extra, "ear.lessee.findings": findings[:1]}
        return {**submods, "gpu0": Submodule(gpu.status, gpu.trust_vector, gpu.policy_id, extra)}

    forge_attest(fresh, bundle=bad)  # honest: consistent
    forge_attest(fresh, bundle=bad, edit=drop_one)
    report = _replay(fresh)
    assert finding_codes(report) == {("verdict_mismatch", 1)}
    assert report.entries[1].logged_status is report.entries[1].recomputed_status
    assert "gpu0 findings only recomputed [gpu0.gpu.devtools (reject" in report.findings[0].message


def test_verdict_with_a_changed_claim_or_detail(fresh: Built) -> None:
    """A claim is part of the verdict; a finding's free-text detail is not."""

    def reword(submods: dict[str, Submodule]) -> dict[str, Submodule]:
        gpu = submods["gpu0"]
        findings = [dict(f, detail="reworded") for f in gpu.extra["ear.lessee.findings"]]
        extra = {**gpu.extra, "ear.lessee.findings": findings}
        return {**submods, "gpu0": Submodule(gpu.status, gpu.trust_vector, gpu.policy_id, extra)}

    def claim(submods: dict[str, Submodule]) -> dict[str, Submodule]:
        gpu = submods["gpu0"]
        extra = {**gpu.extra, "x-test-gpu-nonce": "00" * 32}
        return {**submods, "gpu0": Submodule(gpu.status, gpu.trust_vector, gpu.policy_id, extra)}

    forge_attest(fresh, bundle=evidence(cc_mode_on=False), edit=reword)
    forge_attest(fresh, bundle=evidence(), edit=claim)
    report = _replay(fresh)
    assert finding_codes(report) == {("verdict_mismatch", 1)}
    assert "gpu0 claims differ: ['x-test-gpu-nonce']" in report.findings[0].message


def test_nonce_used_twice(fresh: Built) -> None:
    _, nonce, _ = forge_attest(fresh, bundle=evidence())
    forge_attest(fresh, bundle=evidence(), nonce=nonce)
    report = _replay(fresh)
    assert finding_codes(report) == {("nonce_reused", 1)}
    assert "attest entry 0" in report.findings[0].message


def test_result_id_issued_twice(fresh: Built) -> None:
    forge_attest(fresh, bundle=evidence(), result_id="b" * 32)
    forge_attest(fresh, bundle=evidence(), result_id="b" * 32)
    report = _replay(fresh)
    assert finding_codes(report) == {("result_id_reused", 1)}


def test_release_with_another_token_nonce_or_binding(fresh: Built) -> None:
    token, nonce, key = forge_attest(fresh, bundle=evidence(), result_id="c" * 32)
    # 1: a second token for the same result id (re-signed, different bytes).
    other, _, _ = forge_attest(
        fresh, bundle=evidence(), nonce=nonce, key=key, result_id="c" * 32, append=False
    )
    forge_release(fresh, other, nonce=nonce, key=key)
    # 2: the right token, logged under another nonce (so another binding too).
    forge_release(fresh, token, nonce=b"\x09" * 32, key=key)
    codes = finding_codes(_replay(fresh))
    assert ("release_result_differs", 1) in codes
    assert ("nonce_mismatch", 2) in codes  # the EAR names the old nonce
    assert {("release_nonce_mismatch", 2), ("release_binding_mismatch", 2)} <= codes
    assert ("release_repeated", 2) in codes


def test_result_signed_by_another_key(fresh: Built) -> None:
    fresh.attest(evidence())
    forge_attest(fresh, bundle=evidence(), signer=OTHER_KEY)
    report = _replay(fresh)
    assert finding_codes(report) == {("ear_invalid", 1)}
    assert report.findings[0].message.startswith("ear_algorithm") or report.findings[
        0
    ].message.startswith("ear_signature")


def test_cli_text_progress_and_exitfinding_codes(
    real: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, vkey = str(real.dir / "log.zip"), str(real.dir / "log.vkey")
    args = ["audit", "replay", bundle, "--log-key", vkey, "--verifier-key"]
    rc = main([*args, str(real.dir / "verifier.pem"), "--workers", "2"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out.startswith("OK: 4 entries (3 attest, 0 release, 1 refused), 3/3 verdicts reproduced")
    assert err.startswith("replay: 100.0% 4/4 entries")  # off a terminal: one summary line
    # Another verifier key: every result fails its signature check; --quiet: no progress line.
    (tmp_path / "other.pem").write_bytes(public_pem(OTHER_KEY))
    rc = main([*args, str(tmp_path / "other.pem"), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 1 and err == ""
    assert [line.split(":")[0] for line in out.splitlines()[:3]] == [
        "entry 0",
        "entry 1",
        "entry 2",
    ]
    assert out.count(": ear_invalid: ") == 4 and out.splitlines()[-1].startswith("REJECTED (4")


@pytest.mark.parametrize(
    "change",
    [
        lambda a, t: a.__setitem__(2, str(t / "junk.zip")),  # not a bundle
        lambda a, t: a.__setitem__(6, str(t / "bad.pem")),  # not a key
        lambda a, t: a.__setitem__(6, str(t / "missing.pem")),  # no such file
        lambda a, t: a.extend(["--workers", "0"]),
        lambda a, t: a.extend(["--trust-root-candidates", str(t / "junk.zip")]),
        lambda a, t: a.extend(["--trust-root-candidates", "amd_ark="]),
    ],
)
def test_cli_unreadable_input_exits_2(
    real: Built,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: Callable[[list[str], Path], None],
) -> None:
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    (tmp_path / "bad.pem").write_bytes(
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    )
    args = ["audit", "replay", str(real.dir / "log.zip"), "--log-key", str(real.dir / "log.vkey")]
    args += ["--verifier-key", str(real.dir / "verifier.pem"), "--quiet"]
    change(args, tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lessee: error:") and len(err.strip().splitlines()) == 1


# ---- helpers ---------------------------------------------------------------------------------


def _real_rims() -> tuple[bytes, ...]:
    from tests.audit.helpers import RIMS

    return RIMS


def _enclave_key_of(token: str) -> bytes:
    from attest.ear import verify_ear
    from tests.conftest import RIM_ERA

    claims = verify_ear(token, VERIFIER_KEY.public_key(), at=RIM_ERA.replace(hour=3, minute=1))
    assert claims.enclave_key is not None
    return claims.enclave_key


# ---- results signed before the ``enclave`` submodule ----------------------------------------


def _cpu_only() -> EvidenceBundle:
    """No GPU evidence: the refusal is an enclave-level finding, on no device."""
    full = evidence()
    return EvidenceBundle(cpu=full.cpu, gpus=(), cc_mode_on=True, devtools_on=False)


def test_a_result_without_the_enclave_submodule_is_named_understated(fresh: Built) -> None:
    """Logged as brokers before the ``enclave`` submodule signed it: the verdict itself is
    reproduced (findings and status compared as always), and what the old token hid -- a
    better signed status than the decision -- is its own finding."""
    forge_attest(fresh, bundle=_cpu_only(), without_enclave_submodule=True)
    report = _replay(fresh)
    assert finding_codes(report) == {("ear_status_understated", 0)}
    assert report.entries[0].verdict_equal
    assert report.entries[0].logged_status is Status.CONTRAINDICATED
    assert "with its enclave-level findings the result is contraindicated" in (
        report.findings[0].message
    )


def test_enclave_findings_of_a_result_without_the_enclave_submodule_are_compared(
    fresh: Built,
) -> None:
    """Such a result carries its enclave-level findings only in the top-level claim: findings
    dropped there (the device submodules untouched) are a verdict mismatch (mutation testing:
    no test failed when the quick comparison looked at the submodules alone)."""
    forge_attest(
        fresh, bundle=_cpu_only(), without_enclave_submodule=True, logged_enclave_findings=[]
    )
    report = _replay(fresh)
    assert ("verdict_mismatch", 0) in finding_codes(report)
    assert report.entries[0].verdict_equal is False


def test_a_result_with_the_enclave_submodule_replays_clean(fresh: Built) -> None:
    forge_attest(fresh, bundle=_cpu_only())
    report = _replay(fresh)
    assert report.ok, [f.line() for f in report.all_findings]
    assert report.entries[0].logged_status is Status.CONTRAINDICATED
    assert report.entries[0].verdict_equal


def _twin(token: str) -> str:
    """The token with its ES256 signature's other spelling, (r, n - s): it verifies too."""
    import base64

    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    head, payload, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    s = int.from_bytes(raw[32:], "big")
    twin = raw[:32] + (order - s).to_bytes(32, "big")
    return f"{head}.{payload}." + base64.urlsafe_b64encode(twin).rstrip(b"=").decode()


@pytest.mark.parametrize("spent_by", ["release", "refusal"])
def test_a_result_spelled_with_its_signature_twin_is_the_same_result(
    tmp_path: Path, spent_by: str
) -> None:
    """Anyone holding a token can respell its ES256 signature as (r, n - s); the broker takes
    it (it verifies) and logs the text it acted on. The replay compared whole tokens and so
    accused an honest broker (``release_result_differs`` / ``refusal_result_differs``); it now
    compares what the broker signed."""
    from attest.ear import verify_ear

    b = build(tmp_path, stand_in=True)
    try:
        token = b.attest(evidence())
        twin = _twin(token)
        assert twin != token
        assert verify_ear(twin, VERIFIER_KEY.public_key(), at=b.clock()).result_id
        if spent_by == "release":
            b.release(twin)
        else:
            b.release(token)
            with pytest.raises(ReleaseRefusedError):
                b.release(twin)  # result_used, logged as a refusal of the twin's text
        report = _replay(b)
        assert report.ok, [(f.code, f.message) for f in report.findings]
    finally:
        b.close()
