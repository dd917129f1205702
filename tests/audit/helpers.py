"""Build attestation logs for the replay tests by driving the real broker and log store.

Two kinds of log:

* **real**: the broker appraises the real SEV-SNP (Milan) + legacy Hopper GPU vectors with the
  real composite appraisal at 2024-06-01 (when the RIM signers were valid), the RIMs held by
  the broker and archived as ``broker-rim-N``. The vectors were not made in a broker session,
  so their report_data / SPDM nonce cannot match a derived binding and every result is
  (genuinely) contraindicated; releases are refused.
* **stand-in**: affirming results and real key releases need evidence made for the session,
  i.e. the emulated CC hardware (``agent.emulation``), which is not in the tree yet. Until it
  is, ``stand_in_appraise`` takes the appraisal's place, *identically* for the broker and the
  replay: a deterministic verdict over the same bundle (CC mode, DevTools, the binding), so
  everything around the appraisal -- broker, log, release, replay, parallelism -- runs for real.

Dishonest-broker helpers (``forge_attest``, ``forge_release``) append entries to the same
``LogStore`` directly, signing results with whichever key the test chooses.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.audit.replay import ReplayAppraise, ReplayReport, composite_appraise
from agent.broker.appraiser import composite_appraiser
from agent.broker.keywrap import KeyWrapper
from agent.broker.service import Appraisal, Broker
from agent.broker.store import SqliteBrokerStore
from agent.logstore import LogStore
from attest.appraise.common import DeviceAppraisal, FindingCollector, result_submodules
from attest.appraise.composite import GPU_CATEGORIES, AppraisalContext
from attest.binding import (
    BINDING_CLAIM,
    SessionBinding,
    derive_binding,
    derive_session_binding,
    parse_binding_claim,
)
from attest.bundle import DeviceEvidenceIn, EvidenceBundle, SnpEvidenceIn
from attest.ear import AttestationResult, SigningKey, Status, Submodule, issue_ear
from attest.findings import Finding
from attest.log.entry import (
    BlobRef,
    RefusalReason,
    attest_entry,
    release_entry,
    release_refused_entry,
)
from attest.policy import Policy, load_policy
from sealing.hpke_suite import SuiteId, generate_keypair
from tests.conftest import CPU, NVIDIA, RIM_ERA
from tests.log.helpers import LOG_SIGNER

MODEL = "acme-model-7b"
#: Committed test keys (seeds are SHA-256 of a label; they guard nothing).
VERIFIER_KEY: SigningKey = ec.derive_private_key(
    int.from_bytes(hashlib.sha256(b"lessee replay test verifier key").digest(), "big"),
    ec.SECP256R1(),
)
OTHER_KEY: SigningKey = ed25519.Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"lessee replay test other verifier key").digest()
)
MASTER_KEY = hashlib.sha256(b"lessee replay test master key").digest()
#: The sealed manifest ``build`` registers the model with (version 1).
MANIFEST = hashlib.sha256(b"manifest").digest()

SNP_REPORT = bytes.fromhex((CPU / "snp/virtee-sev/report_milan.hex").read_text().strip())
SNP_CERTS = (
    (CPU / "snp/virtee-sev/vcek_milan.der").read_bytes(),
    (CPU / "snp/virtee-sev/cert_chain_milan").read_bytes(),
)
GPU_REPORT = bytes.fromhex((NVIDIA / "hopper_legacy/attestationReport.txt").read_text().strip())
GPU_CHAIN = (NVIDIA / "hopper_legacy/gpuAkCertChain.txt").read_bytes()
RIMS = tuple(p.read_bytes() for p in sorted((NVIDIA / "rims/test_no_gpu").glob("*.swidtag")))


def snp_measurement() -> str:
    from attest.snp.report import parse_report

    return parse_report(SNP_REPORT).measurement.hex()


def real_policy(**extra: object) -> str:
    doc: dict[str, object] = {
        "name": "replay-real",
        "cpu_tees": ["snp"],
        "snp": {"allowed_measurements": [snp_measurement()]},
        "missing_revocation": "warn",
    }
    doc.update(extra)
    return json.dumps(doc, sort_keys=True)


STAND_IN_POLICY = json.dumps(
    {"name": "replay-stand-in", "cpu_tees": ["snp"], "snp": {"unsafe_any_measurement": True}},
    sort_keys=True,
)


def evidence(*, cc_mode_on: bool = True, with_rims: bool = False) -> EvidenceBundle:
    """The real vectors as one bundle (RIMs left to the broker unless ``with_rims``)."""
    return EvidenceBundle(
        cpu=SnpEvidenceIn(SNP_REPORT, SNP_CERTS),
        gpus=(DeviceEvidenceIn("HOPPER", GPU_REPORT, GPU_CHAIN, rims=RIMS if with_rims else ()),),
        cc_mode_on=cc_mode_on,
        devtools_on=False,
    )


def stand_in_appraise(
    bundle: EvidenceBundle,
    binding: SessionBinding,
    policy: Policy,
    at: datetime,
    context: AppraisalContext,
) -> tuple[tuple[DeviceAppraisal, ...], tuple[Finding, ...]]:
    """Stand-in for appraising emulated hardware (see the module docstring): affirming iff CC
    is on and DevTools off; the session's GPU nonce is carried as a claim, so a replay with
    another binding gets another verdict. A bundle without GPU evidence gets, as from the real
    appraisal, an enclave-level ``gpu.count`` finding and no GPU device."""
    cpu = DeviceAppraisal("cpu0", (), {"hardware": ("cpu.",)})
    if not bundle.gpus:
        return (cpu,), (Finding("enclave", "gpu.count", ">= 1", 0, detail="no GPU evidence"),)
    c = FindingCollector("gpu0")
    c.expect(bundle.cc_mode_on, "gpu.cc_mode", "on", "off")
    c.expect(not bundle.devtools_on, "gpu.devtools", "off", "on")
    gpu = DeviceAppraisal(
        "gpu0", tuple(c.findings), GPU_CATEGORIES, {"x-test-gpu-nonce": binding.gpu_nonce.hex()}
    )
    return (cpu, gpu), ()


def _broker_appraiser(
    appraise: ReplayAppraise,
) -> Callable[[EvidenceBundle, SessionBinding, Policy, datetime], Appraisal]:
    def run(b: EvidenceBundle, s: SessionBinding, p: Policy, at: datetime) -> Appraisal:
        devices, findings = appraise(b, s, p, at, AppraisalContext())
        return Appraisal(devices=devices, findings=findings)

    return run


def enclave_key() -> bytes:
    return generate_keypair(SuiteId.X25519_SHA256_AES256GCM).public_key.encode()


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 7.25) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Built:
    """One test log: the broker over it, its store and clock, and where to put files."""

    dir: Path
    broker: Broker
    log: LogStore
    clock: Clock
    policy_json: str
    appraise: ReplayAppraise
    tokens: list[str] = field(default_factory=list)

    def export(self, name: str = "log.zip") -> Path:
        path = self.dir / name
        self.log.export_bundle(path)
        return path

    def attest(self, bundle: EvidenceBundle, key: bytes | None = None) -> str:
        self.clock.tick()
        ch = self.broker.challenge(MODEL)
        out = self.broker.attest(
            nonce=ch.nonce,
            enclave_public_key=key if key is not None else enclave_key(),
            model_id=MODEL,
            bundle=bundle,
        )
        self.tokens.append(out.result)
        return out.result

    def release(self, token: str) -> None:
        self.clock.tick()
        self.broker.release_key(result=token, model_id=MODEL)

    def close(self) -> None:
        self.log.close()
        self.broker.store.close()  # type: ignore[attr-defined]


def build(
    directory: Path,
    *,
    stand_in: bool,
    policy_json: str | None = None,
    rims: tuple[bytes, ...] = RIMS,
) -> Built:
    """A broker with a fresh SQLite state and log in ``directory``, one model registered."""
    appraise: ReplayAppraise = stand_in_appraise if stand_in else composite_appraise
    appraiser = (
        _broker_appraiser(stand_in_appraise)
        if stand_in
        else composite_appraiser(AppraisalContext(rims=rims))
    )
    policy = policy_json or (STAND_IN_POLICY if stand_in else real_policy())
    clock = Clock(RIM_ERA + timedelta(hours=3))
    log = LogStore(directory / "log.db", LOG_SIGNER)
    broker = Broker(
        store=SqliteBrokerStore(directory / "broker.db"),
        wrapper=KeyWrapper(MASTER_KEY),
        log=log,
        result_key=VERIFIER_KEY,
        appraiser=appraiser,
        clock=clock,
    )
    broker.register_model(
        model_id=MODEL,
        model_version=1,
        data_key=hashlib.sha256(b"data key").digest(),
        policy_json=policy,
        manifest_digest=MANIFEST,
    )
    (directory / "log.vkey").write_text(LOG_SIGNER.verifier().vkey() + "\n")
    (directory / "verifier.pem").write_bytes(public_pem(VERIFIER_KEY))
    return Built(directory, broker, log, clock, policy, appraise)


def public_pem(key: SigningKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def forge_attest(
    b: Built,
    *,
    bundle: EvidenceBundle,
    nonce: bytes | None = None,
    key: bytes | None = None,
    signer: SigningKey = VERIFIER_KEY,
    claim_status: Status | None = None,
    edit: Callable[[dict[str, Submodule]], dict[str, Submodule]] | None = None,
    policy_json: str | None = None,
    claimed_policy_json: str | None = None,
    rims: tuple[bytes, ...] = (),
    append: bool = True,
    result_id: str | None = None,
    without_enclave_submodule: bool = False,
    logged_enclave_findings: list[dict[str, object]] | None = None,
) -> tuple[str, bytes, bytes]:
    """What a dishonest broker could log: an attest entry built like ``Broker.attest`` but with
    any nonce and result signer, a status that overrides every submodule (``claim_status``) or
    any other ``edit`` of the submodules, a result computed under ``claimed_policy_json`` while
    ``policy_json`` is logged, or (``append=False``) a signed result that is never logged.
    ``without_enclave_submodule``: the result as brokers before the ``enclave`` submodule signed
    it (enclave-level findings only in the top-level claim); ``logged_enclave_findings``
    replaces that claim's findings."""
    b.clock.tick()
    at = b.clock()
    nonce = nonce if nonce is not None else hashlib.sha256(at.isoformat().encode()).digest()
    key = key if key is not None else enclave_key()
    policy_text = policy_json or b.policy_json
    policy = load_policy(claimed_policy_json or policy_text)
    binding = derive_binding(nonce, key)
    devices, findings = b.appraise(bundle, binding, policy, at, AppraisalContext(rims=rims))
    submods = (
        {d.name: d.submodule(policy.digest) for d in devices}
        if without_enclave_submodule
        else result_submodules(devices, findings, policy.digest)
    )
    if claim_status is not None:
        submods = {
            n: Submodule(claim_status, s.trust_vector, s.policy_id, s.extra)
            for n, s in submods.items()
        }
    if edit is not None:
        submods = edit(submods)
    result = AttestationResult(
        submods=submods,
        issued_at=int(at.timestamp()),
        expires_at=int(at.timestamp()) + 300,
        verifier_build="lessee 0.1.0",
        nonce=nonce,
        enclave_key=key,
        policy_digest=policy.digest,
        result_id=result_id
        or hashlib.sha256(b"jti" + nonce + at.isoformat().encode()).hexdigest()[:32],
        extra={"ear.lessee.model-id": MODEL}
        | ({"ear.lessee.findings": [f.to_json() for f in findings]} if findings else {})
        | (
            {"ear.lessee.findings": logged_enclave_findings}
            if logged_enclave_findings is not None
            else {}
        ),
    )
    token = issue_ear(result, signer)
    if not append:
        return token, nonce, key
    policy_bytes = policy_text.encode()
    bundle_bytes = bundle.to_json()
    coll = [(BlobRef.of(f"broker-rim-{i}", "application/xml", r), r) for i, r in enumerate(rims)]
    b.log.append(
        attest_entry(
            at=at,
            nonce=nonce,
            binding=binding.report_data,
            policy=BlobRef.of("policy", "application/json", policy_bytes),
            verifier="lessee 0.1.0",
            result=token,
            evidence=[BlobRef.of("evidence-bundle", "application/json", bundle_bytes)],
            collateral=[r for r, _ in coll],
        ),
        [policy_bytes, bundle_bytes, *(d for _, d in coll)],
    )
    return token, nonce, key


def token_binding(token: str, nonce: bytes, key: bytes) -> SessionBinding:
    """The binding a broker derives for a result of its own: version 2 from the label and
    device state the token's ``ear.lessee.binding`` claim names, else version 1 (as
    ``Broker._result_binding``). The payload is read without checking the signature: the
    forger holds the token it forges around."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    if BINDING_CLAIM in claims:
        label, state = parse_binding_claim(claims[BINDING_CLAIM])
        return derive_session_binding(nonce, key, label, state)
    return derive_binding(nonce, key)


def _forged(
    b: Built, token: str, nonce: bytes, key: bytes, model_id: str, advance: float
) -> tuple[dict[str, Any], bytes]:
    """The fields a release-kind entry shares (and the policy bytes it references), as a broker
    that skipped its checks would log them."""
    b.clock.tick(advance)
    policy_bytes = b.policy_json.encode()
    fields = {
        "at": b.clock(),
        "nonce": nonce,
        "binding": token_binding(token, nonce, key).report_data,
        "policy": BlobRef.of("policy", "application/json", policy_bytes),
        "verifier": "lessee 0.1.0",
        "result": token,
        "model_id": model_id,
    }
    return fields, policy_bytes


def forge_release(
    b: Built,
    token: str,
    *,
    nonce: bytes,
    key: bytes,
    model_id: str = MODEL,
    recipient: bytes | None = None,
    advance: float = 7.25,
    manifest: bytes | None = None,
    model_version: int = 1,
) -> None:
    """A release entry appended directly, as a broker that skipped its checks would log it:
    version 1 (as older brokers wrote) unless ``manifest`` names the released manifest
    (version 2, with ``model_version``)."""
    fields, policy_bytes = _forged(b, token, nonce, key, model_id, advance)
    digest = recipient or hashlib.sha256(key).digest()
    b.log.append(
        release_entry(
            **fields,
            recipient_key_sha256=digest,
            model_version=model_version if manifest is not None else None,
            manifest_sha256=manifest,
        ),
        [policy_bytes],
    )


def forge_refusal(
    b: Built,
    token: str,
    reason: RefusalReason,
    *,
    nonce: bytes,
    key: bytes,
    model_id: str = MODEL,
    advance: float = 7.25,
    manifest: bytes | None = None,
    model_version: int = 1,
) -> None:
    """A ``release_refused`` entry appended directly, with whatever reason the test chooses
    (version 2 with ``manifest``, as for ``forge_release``)."""
    fields, policy_bytes = _forged(b, token, nonce, key, model_id, advance)
    digest = hashlib.sha256(key).digest()
    b.log.append(
        release_refused_entry(
            **fields,
            recipient_key_sha256=digest,
            reason=reason,
            model_version=model_version if manifest is not None else None,
            manifest_sha256=manifest,
        ),
        [policy_bytes],
    )


def finding_codes(report: ReplayReport) -> set[tuple[str, int | None]]:
    """Every finding of a replay as (code, entry index): what the replay tests compare."""
    return {(f.code, f.entry) for f in report.all_findings}


def build_emulated(directory: Path, *, name: str, measurement: bytes) -> tuple[Built, Any]:
    """``build`` for emulated hardware: a fresh emulation PKI in ``directory / "pki"``, a policy
    named ``name`` that allows ``measurement`` and trusts the PKI's roots, the broker's clock
    on today's time (emulated OCSP answers are stamped "now") and an appraiser that offers the
    emulated roots as candidates. Returns the broker and the PKI (``agent.emulation``, which
    only the callers import: it needs the emulation extra)."""
    from agent import emulation

    pki = emulation.EmulationPki.create(directory / "pki")
    policy = json.dumps(
        {
            "name": name,
            "cpu_tees": ["snp"],
            "snp": {"allowed_measurements": [measurement.hex()]},
            "roots": {
                "extra_trusted_sha256": [pki.gpu_root.sha256, pki.rim_root.sha256, pki.ark.sha256]
            },
        }
    )
    b = build(directory, stand_in=False, policy_json=policy)
    b.clock.now = datetime.now(UTC).replace(microsecond=0)
    b.broker.appraiser = composite_appraiser(
        AppraisalContext(
            candidates={
                "nvidia_device_root": pki.gpu_root.cert,
                "nvidia_rim_root": pki.rim_root.cert,
            },
            amd_extra_arks=(pki.ark.cert,),
        )
    )
    return b, pki
