"""Fuzzing the zero-trust client's ``evidence_check`` with edited evidence in a version-2 key
bundle (the setting of ``test_zero_trust.py``, minus the relay: the check is called directly).

The evidence is real emulated SEV-SNP + Hopper evidence made for the bundle's key and nonce
(every signature, chain, RIM and OCSP answer in it checks), logged as the broker logs it.
Random byte edits of the evidence JSON, with the bundle rebuilt around them, must:

* only ever be refused with a ``VerificationError`` (the ``KeyAttestationCheck`` contract: a
  parser's or appraiser's own error escaping would be a bug, not a refusal);
* with the log key, never pass unless the bytes are the logged ones (the log proof binds the
  evidence's SHA-256);
* without the log key, pass only when the edit left every signed report as it was: a changed
  CPU or GPU report never appraises affirming. Some edits do pass there, by design: the RIMs'
  trailing self-issued root copy in KeyInfo is dropped unread (``rim_parse._signer_chain``,
  trust comes from the pinned root) and sits inside the enveloped signature, so an edit of it
  changes no appraised byte; the log key is what makes a zero-trust client byte-exact.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.client import evidence_check
from agent.emulation import EmulationPki
from agent.logstore import LogStore
from agent.rpc.server import appraisal_context, load_emulation_roots
from attest.bundle import EvidenceBundle, TdxEvidenceIn, load_bundle
from attest.errors import InputError, VerificationError
from attest.policy import load_policy
from sealing.hpke_suite import HpkePrivateKey
from sealing.stream import KeyBundle
from sealing.stream.bundle import KeyAttestationCheck
from tests.enclave.conftest import OTHER_BROKER, enclave_key, make_ear
from tests.enclave.logproof import LOG_SIGNER, Log, entry_for, proof_bytes
from tests.enclave.test_zero_trust import NONCE, _policy_doc, evidence_for

#: Per test: each example is at most one appraisal of emulated evidence (a few milliseconds).
EXAMPLES = 300


class Setup:
    def __init__(self, tmp: Path) -> None:
        pki_dir = tmp / "pki"
        EmulationPki.create(pki_dir)
        pki = EmulationPki.load(pki_dir)
        policy = load_policy(json.dumps(_policy_doc(pki)))
        context = appraisal_context(emulation=load_emulation_roots(pki_dir))
        self.key: HpkePrivateKey = enclave_key()
        self.evidence = evidence_for(pki, self.key.public_key.encode())
        self.reports = _reports(load_bundle(self.evidence))
        self.ear = make_ear(self.key.public_key.encode(), broker=OTHER_BROKER).encode()
        self.store = LogStore(tmp / "log.db", LOG_SIGNER)
        entry, blobs = entry_for(self.key, self.ear.decode(), nonce=NONCE, evidence=self.evidence)
        self.proof = proof_bytes(Log(self.store).append(entry, blobs), entry.raw)
        self.plain: KeyAttestationCheck = evidence_check(
            policy, context=context, trust_relayed_cc_state=True
        )
        self.logged: KeyAttestationCheck = evidence_check(
            policy, context=context, log_key=LOG_SIGNER.verifier()
        )

    def bundle(self, evidence: bytes) -> KeyBundle:
        return KeyBundle.build(
            self.key.public_key, self.ear, self.proof, evidence=evidence, nonce=NONCE
        )


def _reports(bundle: EvidenceBundle) -> tuple[bytes, ...]:
    """Every signed hardware report in the bundle (CPU first)."""
    cpu = bundle.cpu
    first = b"" if cpu is None else cpu.quote if isinstance(cpu, TdxEvidenceIn) else cpu.report
    return (first, *(d.report for d in (*bundle.gpus, *bundle.switches)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(tmp_path_factory.mktemp("zero-trust-edits"))
    yield s
    s.store.close()


def test_the_unedited_bundle_passes_both_checks(setup: Setup) -> None:
    now = datetime.now(UTC)
    setup.plain(setup.bundle(setup.evidence), now)
    setup.logged(setup.bundle(setup.evidence), now)


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@cache
def _b64_positions(data: bytes) -> tuple[int, ...]:
    return tuple(i for i, b in enumerate(data) if b in _B64)


@st.composite
def edited(draw: st.DrawFn, data: bytes) -> bytes:
    """One to three edits; most swap one base64 character for another (the JSON stays valid,
    so the appraisal itself must refuse), the rest set, insert or delete raw bytes."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(out) - 1))
        kind = draw(st.sampled_from(["b64", "b64", "b64", "set", "insert", "delete"]))
        if kind == "b64":
            # A base64 character of the original (inside a report, certificate, OCSP answer,
            # RIM, or a key or literal), replaced by another.
            i = min(draw(st.sampled_from(_b64_positions(data))), len(out) - 1)
            out[i] = draw(st.sampled_from([b for b in _B64 if b != out[i]]))
        elif kind == "set":
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del out[at : at + draw(st.integers(1, 16))]
    return bytes(out)


def _run(check: KeyAttestationCheck, bundle: KeyBundle) -> VerificationError | None:
    try:
        check(bundle, datetime.now(UTC))
    except VerificationError as exc:
        return exc
    return None


_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_SETTINGS
@given(data=st.data())
def test_edited_evidence_never_passes_with_the_log_key(setup: Setup, data: st.DataObject) -> None:
    evidence = data.draw(edited(setup.evidence))
    if evidence == setup.evidence:
        return
    err = _run(setup.logged, setup.bundle(evidence))
    assert err is not None, "edited evidence passed the zero-trust check with the log key"
    assert err.reason in {"evidence_malformed", "evidence_not_affirming", "log_entry_evidence"}


@_SETTINGS
@given(data=st.data())
def test_edited_evidence_passes_only_with_its_reports_intact(
    setup: Setup, data: st.DataObject
) -> None:
    evidence = data.draw(edited(setup.evidence))
    err = _run(setup.plain, setup.bundle(evidence))
    if err is not None:
        assert err.reason in {"evidence_malformed", "evidence_not_affirming"}
        return
    try:
        reports = _reports(load_bundle(evidence))
    except InputError:  # pragma: no cover - it passed, so it loads
        pytest.fail("evidence that does not load passed the check")
    assert reports == setup.reports, "evidence with an edited report appraised affirming"
