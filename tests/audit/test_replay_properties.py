"""Replay of single entries on adversarial bytes, the verdict-equality rule, trust-root
candidates: whatever a log holds, replay answers with named findings, never a crash."""

from __future__ import annotations

import hashlib
import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.audit.replay import (
    EntryInput,
    EntryReplayer,
    ReplayConfig,
    ReplayReport,
    RootCandidate,
    Verdict,
    _spki,
    compare_verdicts,
    composite_appraise,
    infer_root_role,
    load_root_candidates,
    parse_candidate_arg,
    replay_bundle_file,
)
from agent.broker.appraiser import composite_appraiser
from attest import roots
from attest.appraise.composite import AppraisalContext
from attest.binding import derive_binding
from attest.ear import AttestationResult, Status, issue_ear
from attest.errors import InputError
from attest.log.entry import BlobRef, attest_entry
from attest.log.note import NoteSignature, format_note, parse_note
from attest.policy import load_policy
from attest.x509chain import load_pem_chain
from tests.audit.helpers import (
    MODEL,
    RIMS,
    VERIFIER_KEY,
    build,
    evidence,
    forge_attest,
    real_policy,
)
from tests.conftest import RIM_ERA
from tests.log.helpers import LOG_SIGNER, WITNESS

AT = RIM_ERA + timedelta(hours=5)
NONCE = hashlib.sha256(b"property nonce").digest()
KEY = b"\x02" + hashlib.sha256(b"enclave").digest()  # any bytes: replay only hashes it
POLICY = real_policy().encode()
EVIDENCE = evidence().to_json()
SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
#: What a replay of one attest entry may report for bad evidence bytes.
EVIDENCE_CODES = {"evidence_malformed", "verdict_mismatch"}


def _token(evidence_bytes: bytes = EVIDENCE) -> str:
    """The result an honest broker would sign for ``EVIDENCE`` (verdict from the real
    composite appraisal, RIMs as broker collateral)."""
    from attest.bundle import load_bundle

    policy = load_policy(POLICY)
    binding = derive_binding(NONCE, KEY)
    devices, findings = composite_appraise(
        load_bundle(evidence_bytes), binding, policy, AT, AppraisalContext(rims=RIMS)
    )
    result = AttestationResult(
        submods={d.name: d.submodule(policy.digest) for d in devices},
        issued_at=int(AT.timestamp()),
        expires_at=int(AT.timestamp()) + 300,
        verifier_build="lessee 0.1.0",
        nonce=NONCE,
        enclave_key=KEY,
        policy_digest=policy.digest,
        result_id="a" * 32,
        extra={"ear.lessee.model-id": MODEL}
        | ({"ear.lessee.findings": [f.to_json() for f in findings]} if findings else {}),
    )
    return issue_ear(result, VERIFIER_KEY)


TOKEN = _token()
REPLAYER = EntryReplayer(ReplayConfig(_spki(VERIFIER_KEY.public_key())))


def _input(
    *, evidence_bytes: bytes = EVIDENCE, policy: bytes = POLICY, token: str = TOKEN
) -> EntryInput:
    rims = [(BlobRef.of(f"broker-rim-{i}", "application/xml", r), r) for i, r in enumerate(RIMS)]
    entry = attest_entry(
        at=AT,
        nonce=NONCE,
        binding=derive_binding(NONCE, KEY).report_data,
        policy=BlobRef.of("policy", "application/json", policy),
        verifier="lessee 0.1.0",
        result=token,
        evidence=[BlobRef.of("evidence-bundle", "application/json", evidence_bytes)],
        collateral=[ref for ref, _ in rims],
    )
    blobs = {hashlib.sha256(d).digest(): d for d in (policy, evidence_bytes, *RIMS)}
    return EntryInput(7, entry, blobs)


def _codes(item: EntryInput) -> set[str]:
    result = REPLAYER.replay(item)
    assert all(f.entry == 7 for f in result.findings)
    return {f.code for f in result.findings}


def test_the_unmodified_entry_replays_clean() -> None:
    result = REPLAYER.replay(_input())
    assert result.findings == () and result.verdict_equal is True
    assert result.recomputed_status is Status.CONTRAINDICATED  # not a session's evidence


@SETTINGS
@given(pos=st.integers(0, len(EVIDENCE) - 1), value=st.integers(0, 255))
def test_single_byte_changes_of_logged_evidence(pos: int, value: int) -> None:
    """A log that archived different bytes than it appraised: a finding, never a crash."""
    changed = bytearray(EVIDENCE)
    if changed[pos] == value:
        value ^= 1
    changed[pos] = value
    assert _codes(_input(evidence_bytes=bytes(changed))) <= EVIDENCE_CODES


@SETTINGS
@given(cut=st.integers(0, len(EVIDENCE) - 1))
def test_truncated_evidence(cut: int) -> None:
    assert _codes(_input(evidence_bytes=EVIDENCE[:cut])) == {"evidence_malformed"}


@SETTINGS
@given(data=st.binary(max_size=2048))
def test_random_evidence_and_policy_bytes(data: bytes) -> None:
    assert _codes(_input(evidence_bytes=data)) == {"evidence_malformed"}
    assert _codes(_input(policy=data)) == {"policy_invalid"}


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@SETTINGS
@given(pos=st.integers(0, len(TOKEN) - 1), char=st.sampled_from(_B64URL))
def test_single_character_changes_of_the_logged_result(pos: int, char: str) -> None:
    if TOKEN[pos] in ".":
        return
    token = TOKEN[:pos] + char + TOKEN[pos + 1 :]
    codes = _codes(_input(token=token))
    if token == TOKEN:
        assert codes == set()
    else:
        # Unpadded base64url ignores the spare low bits of the last character, so a few
        # changes there decode to the same signed bytes: those tokens still verify.
        assert codes in ({"ear_invalid"}, {"ear_malformed"}, set())


def test_wrong_roles_and_numbering_are_named() -> None:
    item = _input()
    e = item.entry
    from dataclasses import replace

    odd = replace(
        e,
        collateral=(BlobRef.of("vcek", "application/pkix-cert", b"x"),),
        raw=b"",
    )
    blobs = {**item.blobs, hashlib.sha256(b"x").digest(): b"x"}
    assert _codes(EntryInput(7, odd, blobs)) == {"collateral_unknown"}
    gap = replace(e, collateral=e.collateral[1:], raw=b"")
    assert _codes(EntryInput(7, gap, item.blobs)) == {"collateral_unknown"}
    two = replace(
        e,
        evidence=(*e.evidence, BlobRef.of("evidence-extra", "application/json", b"x")),
        raw=b"",
    )
    assert _codes(EntryInput(7, two, blobs)) == {"evidence_unusable"}
    media = replace(e, evidence=(BlobRef.of("evidence-bundle", "text/plain", EVIDENCE),), raw=b"")
    assert _codes(EntryInput(7, media, item.blobs)) == {"evidence_unusable"}


def test_entry_time_and_binding_must_match_the_result() -> None:
    from dataclasses import replace

    item = _input()
    later = replace(item.entry, time=AT + timedelta(seconds=5), raw=b"")
    assert _codes(EntryInput(7, later, item.blobs)) == {"ear_time_mismatch"}
    rebound = replace(item.entry, binding=b"\x00" * 64, raw=b"")
    assert _codes(EntryInput(7, rebound, item.blobs)) == {"binding_mismatch"}
    renonced = replace(item.entry, nonce=b"\x01" * 32, raw=b"")
    # Another nonce: the result names the old one, the binding no longer derives, and the
    # appraisal under the re-derived binding expects other values than the result recorded.
    assert _codes(EntryInput(7, renonced, item.blobs)) == {
        "nonce_mismatch",
        "binding_mismatch",
        "verdict_mismatch",
    }


# ---- the equality rule ------------------------------------------------------------------------

_finding = st.fixed_dictionaries(
    {
        "device": st.sampled_from(["cpu0", "gpu0", "enclave"]),
        "field": st.sampled_from(["gpu.cc_mode", "snp.report_data", "measres", "gpu.count"]),
        "expected": st.one_of(st.none(), st.integers(0, 3), st.text(max_size=4)),
        "actual": st.one_of(st.none(), st.integers(0, 3), st.text(max_size=4)),
        "severity": st.sampled_from(["reject", "warn"]),
        "detail": st.text(max_size=8),
    }
)


def _verdict(findings: list[dict[str, object]], enclave: list[dict[str, object]]) -> Verdict:
    status = (
        "contraindicated"
        if any(f["severity"] == "reject" for f in findings)
        else ("warning" if findings else "affirming")
    )
    v = Verdict.build(
        {"gpu0": {"ear.status": status, "ear.lessee.findings": findings, "measres": "success"}},
        enclave,
    )
    assert v is not None
    return v


@SETTINGS
@given(
    findings=st.lists(_finding, max_size=5),
    enclave=st.lists(_finding, max_size=3),
    data=st.data(),
)
def test_equality_ignores_order_and_detail_but_nothing_else(
    findings: list[dict[str, object]], enclave: list[dict[str, object]], data: st.DataObject
) -> None:
    base = _verdict(findings, enclave)
    shuffled = data.draw(st.permutations(findings))
    reworded = [dict(f, detail="other words") for f in shuffled]
    assert compare_verdicts(base, _verdict(reworded, list(reversed(enclave)))) == []
    extra: dict[str, object] = dict(data.draw(_finding))
    assert compare_verdicts(base, _verdict([*findings, extra], enclave)) != []
    assert compare_verdicts(base, _verdict(findings, [*enclave, extra])) != []
    if findings:
        assert compare_verdicts(base, _verdict(findings[1:], enclave)) != []


def test_overall_status_counts_enclave_findings() -> None:
    warn = {
        "device": "enclave",
        "field": "gpu.count",
        "expected": 1,
        "actual": 2,
        "severity": "warn",
    }
    v = Verdict.build({"cpu0": {"ear.status": "affirming"}}, [warn])
    assert v is not None and v.status is Status.WARNING
    assert Verdict.build({"cpu0": {"ear.status": "affirming"}}, [{"device": "x"}]) is None
    assert Verdict.build({"cpu0": {"ear.status": "great"}}, []) is None


# ---- trust-root candidates -------------------------------------------------------------------

AMD_MILAN = Path(roots.__file__).parent / "amd" / "ask_ark_milan.pem"


def test_roles_are_inferred_from_the_real_roots() -> None:
    assert infer_root_role(roots.nvidia_device_root()) == "nvidia_device_root"
    assert infer_root_role(roots.nvidia_rim_root()) == "nvidia_rim_root"
    _ask, ark = load_pem_chain(AMD_MILAN.read_bytes())
    assert infer_root_role(ark) == "amd_ark"
    assert [c.role for c in load_root_candidates(AMD_MILAN.read_bytes())] == [
        "nvidia_device_root",  # the ASK is no root: it would simply never be listed by a policy
        "amd_ark",
    ]
    assert {c.role for c in load_root_candidates(AMD_MILAN.read_bytes(), role="amd_ark")} == {
        "amd_ark"
    }


def test_candidate_arguments() -> None:
    assert parse_candidate_arg("nvidia_rim_root=/x/r.pem") == ("nvidia_rim_root", "/x/r.pem")
    assert parse_candidate_arg("/x/a=b.pem") == (None, "/x/a=b.pem")
    assert parse_candidate_arg("r.pem") == (None, "r.pem")
    with pytest.raises(InputError):
        parse_candidate_arg("amd_ark=")
    with pytest.raises(InputError):
        RootCandidate("intel_root", b"")


@SETTINGS
@given(data=st.binary(max_size=512))
def test_candidate_files_of_random_bytes(data: bytes) -> None:
    with pytest.raises(InputError):
        load_root_candidates(b"-----BEGIN CERTIFICATE-----\n" + data)
    try:
        load_root_candidates(data)
    except InputError:
        pass


def test_policy_named_roots_are_used_only_when_supplied(tmp_path: Path) -> None:
    """The policy trusts NVIDIA's own device root once more by digest (a stand-in for an
    emulation root): the broker archives it, so the replay uses it without a candidate; an entry
    logged without the archived root (a forged one here) names the missing root."""
    from cryptography.hazmat.primitives.serialization import Encoding

    device_root = roots.nvidia_device_root()
    der = device_root.public_bytes(Encoding.DER)
    digest = hashlib.sha256(der).hexdigest()
    policy = real_policy(roots={"extra_trusted_sha256": [digest]})
    b = build(tmp_path, stand_in=False, policy_json=policy)
    try:
        b.broker.appraiser = composite_appraiser(
            AppraisalContext(rims=RIMS, candidates={"nvidia_device_root": device_root})
        )
        b.attest(evidence())
        bundle = b.export()
        from cryptography.hazmat.primitives.asymmetric import ec

        assert isinstance(VERIFIER_KEY, ec.EllipticCurvePrivateKey)
        without = replay_bundle_file(bundle, LOG_SIGNER.verifier(), VERIFIER_KEY.public_key())
        with_root = replay_bundle_file(
            bundle,
            LOG_SIGNER.verifier(),
            VERIFIER_KEY.public_key(),
            candidates=[RootCandidate("nvidia_device_root", der)],
        )
        # A dishonest verdict under that policy, replayed without the root: the finding says
        # which root was missing and how to supply it.
        forge_attest(b, bundle=evidence(), claim_status=Status.AFFIRMING, rims=RIMS)
        forged = replay_bundle_file(
            b.export("forged.zip"), LOG_SIGNER.verifier(), VERIFIER_KEY.public_key()
        )
    finally:
        b.close()
    assert without.ok and without.entries[0].roots_unavailable == ()
    assert with_root.ok and with_root.entries[0].roots_unavailable == ()
    msg = next(f.message for f in forged.findings if f.code == "verdict_mismatch")
    assert digest in msg and "--trust-root-candidates" in msg


def test_report_json_is_plain_json(tmp_path: Path) -> None:
    b = build(tmp_path, stand_in=False)
    try:
        b.attest(evidence())
        report = replay_bundle_file(b.export(), LOG_SIGNER.verifier(), VERIFIER_KEY.public_key())
    finally:
        b.close()
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["report_version"] == 1 and doc["ok"] is True
    assert doc["entries"][0]["verdict_equal"] is True
    assert set(doc["log"]) == {
        "origin",
        "entries",
        "tree_size",
        "root_hash",
        "checkpoints_verified",
        "witness_cosignatures",
    }


def test_replay_checks_pinned_witness_cosignatures(tmp_path: Path) -> None:
    """``replay`` runs ``verify`` with the auditor's witness keys: a forged cosignature on the
    newest checkpoint fails the replay (stage ``verify``), a genuine one is counted."""
    b = build(tmp_path, stand_in=False)
    try:
        b.attest(evidence())
        clean = b.export()
    finally:
        b.close()
    with zipfile.ZipFile(clean) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    newest = max(n for n in members if n.startswith("checkpoints/"))
    note = parse_note(members[newest])
    at = datetime(2026, 11, 28, tzinfo=UTC)
    good = WITNESS.cosign(note.text, at)
    forged = NoteSignature(good.name, good.key_id, good.signature[:8] + bytes(64))

    def replay_with(line: NoteSignature) -> ReplayReport:
        members[newest] = format_note(note.text, [*note.signatures, line])
        path = tmp_path / "cosigned.zip"
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return replay_bundle_file(
            path, LOG_SIGNER.verifier(), VERIFIER_KEY.public_key(), witnesses=[WITNESS.verifier()]
        )

    ok = replay_with(good)
    assert ok.ok and ok.audit.witness_cosignatures == 1
    bad = replay_with(forged)
    assert not bad.ok and bad.audit.witness_cosignatures == 0
    found = [f for f in bad.to_json()["findings"] if f["code"] == "checkpoint_cosignature"]
    assert [(f["stage"], f["checkpoint"]) for f in found] == [
        ("verify", newest.removeprefix("checkpoints/"))
    ]
