"""GPU evidence verification cost, as ratios to one raw ECDSA P-384 verify measured here.

Rows (legacy Hopper report + the two test_no_gpu RIMs, as of 2024-06-01, the only vector set
that passes every check):

* ``p384_verify``: the baseline, one raw signature check of that report with its leaf key;
* ``gpu_verify_warm``: the whole pipeline with chain, RIM, report and comparison caches warm;
  issue #2 target: <= 1.5x the baseline;
* ``gpu_verify_warm_new_report``: the same, but the report parse and measurement comparison
  are redone each time (what a fresh report with a new nonce costs; informational);
* ``gpu_verify_cold_pipeline``: fresh caches every time, so the device chain (4 signatures),
  the report signature and both RIMs (parse, signer chains, XML-DSig with C14N) are verified
  from scratch on the real vectors, with ``--revocation skip``;
* ``ocsp_stapled_cold``: the stapled OCSP work the same pipeline does in ``stapled`` mode, on a
  synthetic PKI shaped like NVIDIA's (5-certificate device chain; two RIM signer chains sharing
  L3 and CA; P-384/SHA-384 throughout): parse the stapled responses, then verify one good,
  issuer-signed response for each of the 3 device and 2 x 3 RIM certificates NVIDIA checks, with
  a fresh OCSP cache (the shared L3 and CA answers are cache hits for the second RIM: 7 response
  signatures). NVIDIA's real certificates have no offline OCSP responses, so this part cannot
  run on the real chains;
* ``ocsp_stapled_cold_delegated``: the same with delegated responders (each response signed by
  an OCSP-signing certificate its issuer made, included in the response: 2 signatures each);
  informational, for the case that NVIDIA's responder works that way;
* ``gpu_verify_cold_composed``: the cold work of the legacy vectors plus the stapled OCSP
  work, composed: one ``gpu_verify_cold_pipeline`` run followed by one ``ocsp_stapled_cold``
  run per sample (the two halves never overlap, unlike in the product); informational;
* ``gpu_verify_cold_one_thread``: the same composed work with the pool off (everything in the
  calling thread), measured in the same run: what it costs in CPU, and how much of the
  ``gpu_verify_cold_composed`` time the second core saves; informational;
* ``gpu_verify_cold_stapled``: the issue #2 "full cold pipeline" (chain + both RIMs with
  XML-DSig + stapled OCSP) as the product runs it: ONE ``verify_gpu_evidence`` call in
  ``stapled`` mode with fresh ``VerifierCaches`` (so a fresh OCSP verdict cache) and the
  stapled responses parsed inside the sample, on emulated Hopper evidence
  (``agent.emulation``: byte-exact SPDM report with 64 measurements, 5-certificate device
  chain, driver and VBIOS RIMs signed NVIDIA's way with 64 entries in NVIDIA's layout, each by
  its own leaf signer and embedding NVIDIA's 4-certificate RIM chain shape (signer, L3, CA,
  root), 7 issuer-signed P-384 OCSP responses: device links 1..3, both RIM signers, the shared
  RIM L3 and CA) built once in a
  temporary PKI before timing, trusted through ``VerifierCaches(device_root=, rim_root=)`` as
  the broker trusts a policy's emulation roots. Every check must pass. Emulated material is
  used because the real vectors cannot carry valid stapled OCSP (NVIDIA's responses are online
  only, and the legacy chain expired). Target <= 10 ms. The verifier runs independent
  signature checks (device chain, report, RIM chains, every OCSP response) concurrently with
  the RIMs' XML work on its shared pool (``attest.x509chain``; ``pool_workers`` says how many
  threads besides the caller);
* ``gpu_verify_cold_stapled_one_thread``: the same call with the pool off; informational;
* ``cli_gpu_verify_process``: ``lessee gpu verify`` as a whole process (imports included).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.emulation import EmulatedGpu, EmulationPki
from agent.rim_fetch import DirectoryRimSource
from attest.concurrency import set_pool_workers
from attest.nvidia.evidence import Arch, DeviceEvidence, load_evidence
from attest.nvidia.opaque import ReportCache
from attest.nvidia.rim import RimCollection
from attest.nvidia.verifier import VerifierCaches, _Memo, verify_gpu_evidence
from attest.revocation.ocsp import (
    OcspCache,
    StapledOcsp,
    check_chain_revocation,
    nvidia_device_ocsp_indices,
    nvidia_rim_ocsp_indices,
)
from attest.x509chain import load_pem_chain
from bench.timing import median_seconds, row

ROOT = Path(__file__).resolve().parents[1]
NVIDIA = ROOT / "tests" / "assets" / "nvidia"
NONCE = bytes.fromhex("4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e")
AT = datetime(2024, 6, 1, tzinfo=UTC)
COLD_TARGET_MS = 10.0

#: Private scalars of the synthetic OCSP PKI's P-384 keys are this plus a small index: fixed
#: public numbers, so the PKI is the same every run; bench-only keys that protect nothing.
_SCALAR_BASE = 0x1E55EE0000


@dataclass(frozen=True)
class _OcspShape:
    """Chains (leaf first, root last) with the indexes NVIDIA checks, and stapled responses."""

    chains: tuple[tuple[tuple[x509.Certificate, ...], tuple[int, ...]], ...]
    responses: tuple[bytes, ...]
    #: when to check them: ``cryptography`` stamps producedAt with the host clock, so the
    #: synthetic PKI lives around the moment it was built, not around ``AT``
    at: datetime


def _ocsp_shape(*, delegated: bool) -> _OcspShape:
    """A PKI shaped like NVIDIA's device and RIM chains, with one good response per checked
    certificate (SHA-384 CertID, P-384/SHA-384 signature), valid at ``_OcspShape.at``."""
    built = datetime.now(UTC).replace(microsecond=0)
    keys: dict[str, ec.EllipticCurvePrivateKey] = {}

    def key(name: str) -> ec.EllipticCurvePrivateKey:
        if name not in keys:
            keys[name] = ec.derive_private_key(_SCALAR_BASE + len(keys), ec.SECP384R1())
        return keys[name]

    certs: dict[str, x509.Certificate] = {}

    def cert(
        name: str, issuer: str, *, ca: bool, eku: list[x509.ObjectIdentifier] | None = None
    ) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench {name}")])
        issuer_name = subject if issuer == name else certs[issuer].subject
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key(name).public_key())
            .serial_number(len(certs) + 1)
            .not_valid_before(built - timedelta(days=365))
            .not_valid_after(built + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        certs[name] = builder.sign(key(issuer), hashes.SHA384())
        return certs[name]

    for name, issuer in (
        ("device root", "device root"),
        ("identity", "device root"),
        ("provisioner ica", "identity"),
        ("brom", "provisioner ica"),
        ("rim root", "rim root"),
        ("rim ca", "rim root"),
        ("rim l3", "rim ca"),
    ):
        cert(name, issuer, ca=True)
    for name, issuer in (("fmc leaf", "brom"), ("l4 driver", "rim l3"), ("l4 vbios", "rim l3")):
        cert(name, issuer, ca=False)
    device = tuple(certs[n] for n in ("fmc leaf", "brom", "provisioner ica", "identity"))
    device += (certs["device root"],)
    rim_upper = (certs["rim l3"], certs["rim ca"], certs["rim root"])
    chains = (
        (device, nvidia_device_ocsp_indices(len(device))),
        ((certs["l4 driver"], *rim_upper), nvidia_rim_ocsp_indices(len(rim_upper) + 1)),
        ((certs["l4 vbios"], *rim_upper), nvidia_rim_ocsp_indices(len(rim_upper) + 1)),
    )
    issuer_of = {c.subject: n for n, c in certs.items()}
    responses: dict[bytes, bytes] = {}
    for chain, indices in chains:
        for i in indices:
            subject, issuer_cert = chain[i], chain[i + 1]
            issuer = issuer_of[issuer_cert.subject]
            signer_name, included = issuer, []
            if delegated:
                signer_name = f"{issuer} ocsp"
                if signer_name not in certs:
                    cert(signer_name, issuer, ca=False, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
                included = [certs[signer_name]]
            builder = (
                ocsp.OCSPResponseBuilder()
                .add_response(
                    cert=subject,
                    issuer=issuer_cert,
                    algorithm=hashes.SHA384(),
                    cert_status=ocsp.OCSPCertStatus.GOOD,
                    this_update=built - timedelta(hours=1),
                    next_update=built + timedelta(days=7),
                    revocation_time=None,
                    revocation_reason=None,
                )
                .responder_id(ocsp.OCSPResponderEncoding.HASH, certs[signer_name])
            )
            if included:
                builder = builder.certificates(included)
            der = builder.sign(key(signer_name), hashes.SHA384()).public_bytes(Encoding.DER)
            responses.setdefault(subject.fingerprint(hashes.SHA256()), der)
    return _OcspShape(
        chains=chains, responses=tuple(responses.values()), at=built + timedelta(minutes=1)
    )


def _ocsp_cold(shape: _OcspShape) -> OcspCache:
    """What ``stapled`` mode adds to a cold pipeline: parse the stapled responses, then check
    every chain NVIDIA's way with one fresh cache shared by the device and both RIMs."""
    cache = OcspCache()
    source = StapledOcsp(shape.responses)
    for chain, indices in shape.chains:
        checks = check_chain_revocation(
            chain, indices=indices, mode="stapled", source=source, at=shape.at, cache=cache
        )
        if not all(c.ok for c in checks):
            raise RuntimeError("benchmark OCSP responses no longer verify")
    return cache


@dataclass(frozen=True)
class _EmulatedStapled:
    """One emulated Hopper GPU's evidence with all its collateral, ready to verify."""

    pki: EmulationPki
    evidence: tuple[DeviceEvidence, ...]
    nonce: bytes
    rims: RimCollection
    responses: tuple[bytes, ...]
    at: datetime


def _emulated_stapled(directory: Path) -> _EmulatedStapled:
    """A fresh emulation PKI in ``directory`` (a temporary one: no committed keys) and one GPU's
    report, chain, signed RIMs and stapled OCSP responses, all current at the returned ``at``."""
    pki = EmulationPki.create(directory / "pki")
    gpu = EmulatedGpu(pki)
    at = datetime.now(UTC)
    nonce = os.urandom(32)
    evidence = (
        DeviceEvidence(
            index=0,
            arch=Arch(gpu.arch),
            report_bytes=gpu.report(nonce),
            chain=load_pem_chain(gpu.certificate_chain_pem()),
        ),
    )
    return _EmulatedStapled(
        pki=pki,
        evidence=evidence,
        nonce=nonce,
        rims=RimCollection((gpu.driver_rim(), gpu.vbios_rim())),
        responses=gpu.ocsp_responses(at),
        at=at,
    )


def _cold_stapled(material: _EmulatedStapled) -> VerifierCaches:
    """One cold verification as the product runs it: fresh caches (chains, RIMs, reports, OCSP
    verdicts), the stapled responses parsed, one ``verify_gpu_evidence`` call; every check
    must pass (affirming: stapled OCSP good, nonce checked, measurements equal)."""
    caches = VerifierCaches(
        device_root=material.pki.gpu_root.cert, rim_root=material.pki.rim_root.cert
    )
    result = verify_gpu_evidence(
        material.evidence,
        at=material.at,
        expected_nonce=material.nonce,
        rim_source=material.rims,
        revocation_mode="stapled",
        ocsp_source=StapledOcsp(material.responses),
        caches=caches,
    )
    if result.failures or result.devices[0].failures or not result.ok:
        raise RuntimeError("emulated benchmark evidence no longer verifies")
    return caches


def run() -> list[dict[str, object]]:
    evidence = load_evidence(
        (NVIDIA / "hopper_legacy/attestationReport.txt").read_bytes(),
        certs=(NVIDIA / "hopper_legacy/gpuAkCertChain.txt").read_bytes(),
    )
    rims = DirectoryRimSource([NVIDIA / "rims" / "test_no_gpu"])
    report = evidence[0].report_bytes
    key = evidence[0].chain[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    sig = report[-96:]
    der = encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))

    def raw_verify() -> None:
        key.verify(der, report[:-96], ec.ECDSA(hashes.SHA384()))

    def pipeline(caches: VerifierCaches) -> None:
        result = verify_gpu_evidence(
            evidence,
            at=AT,
            expected_nonce=NONCE,
            rim_source=rims,
            revocation_mode="skip",
            ocsp_source=None,
            caches=caches,
        )
        if result.devices[0].failures:
            raise RuntimeError("benchmark vector no longer verifies")

    baseline = median_seconds(raw_verify, repeat=400, warmup=20)
    warm_caches = VerifierCaches()
    warm = median_seconds(lambda: pipeline(warm_caches), repeat=400, warmup=20)

    def new_report() -> None:
        warm_caches.reports = ReportCache()
        warm_caches.comparisons = _Memo(16)
        pipeline(warm_caches)

    fresh = median_seconds(new_report, repeat=200, warmup=10)
    cold = median_seconds(lambda: pipeline(VerifierCaches()), repeat=40, warmup=3)
    shapes = {"issuer": _ocsp_shape(delegated=False), "delegated": _ocsp_shape(delegated=True)}
    ocsp_ms: dict[str, float] = {}
    ocsp_facts: dict[str, dict[str, float]] = {}
    for label, shape in shapes.items():
        once = _ocsp_cold(shape)
        ocsp_facts[label] = {
            "stapled_responses": float(len(shape.responses)),
            "responses_verified": float(once.misses),
            "cache_hits": float(once.hits),
        }
        ocsp_ms[label] = median_seconds(partial(_ocsp_cold, shape), repeat=40, warmup=3)

    def full_cold() -> None:
        pipeline(VerifierCaches())
        _ocsp_cold(shapes["issuer"])

    full = median_seconds(full_cold, repeat=40, warmup=3)
    with tempfile.TemporaryDirectory(prefix="lessee-bench-gpu-") as tmp:
        material = _emulated_stapled(Path(tmp))
    once = _cold_stapled(material)
    stapled_facts = {
        "stapled_responses": float(len(material.responses)),
        "ocsp_responses_verified": float(once.ocsp.misses),
        "ocsp_cache_hits": float(once.ocsp.hits),
        "link_signatures": float(once.chains.link_misses),
        "link_cache_hits": float(once.chains.link_hits),
    }
    stapled = median_seconds(partial(_cold_stapled, material), repeat=60, warmup=3)
    workers = set_pool_workers(0)
    try:
        one_thread = median_seconds(full_cold, repeat=40, warmup=3)
        stapled_one_thread = median_seconds(partial(_cold_stapled, material), repeat=60, warmup=3)
    finally:
        set_pool_workers(workers)

    argv = [
        sys.executable,
        "-m",
        "agent.cli.main",
        "gpu",
        "verify",
        str(NVIDIA / "hopper_legacy/attestationReport.txt"),
        "--certs",
        str(NVIDIA / "hopper_legacy/gpuAkCertChain.txt"),
        "--nonce",
        NONCE.hex(),
        "--rim",
        str(NVIDIA / "rims/test_no_gpu"),
        "--at",
        "2024-06-01T00:00:00Z",
        "--revocation",
        "skip",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def process() -> None:
        subprocess.run(argv, check=True, capture_output=True, cwd=ROOT, env=env)

    start = time.perf_counter()
    process()
    first = time.perf_counter() - start
    proc = median_seconds(process, repeat=5, warmup=0)

    return [
        row("p384_verify", baseline),
        row(
            "gpu_verify_warm",
            warm,
            target_ratio=1.5,
            baseline_name="p384_verify",
            baseline_seconds=baseline,
        ),
        row(
            "gpu_verify_warm_new_report",
            fresh,
            baseline_name="p384_verify",
            baseline_seconds=baseline,
        ),
        row(
            "gpu_verify_cold_pipeline",
            cold,
            revocation="skip",
            measured="real report + chain + both real RIMs, fresh caches, revocation skip",
            baseline_name="p384_verify",
            baseline_seconds=baseline,
        ),
        row(
            "ocsp_stapled_cold",
            ocsp_ms["issuer"],
            measured="synthetic NVIDIA-shaped PKI, issuer-signed P-384 responses, fresh cache",
            **ocsp_facts["issuer"],
            baseline_name="p384_verify",
            baseline_seconds=baseline,
        ),
        row(
            "ocsp_stapled_cold_delegated",
            ocsp_ms["delegated"],
            measured="as ocsp_stapled_cold, responses signed by delegated OCSP responders",
            **ocsp_facts["delegated"],
            baseline_name="p384_verify",
            baseline_seconds=baseline,
        ),
        row(
            "gpu_verify_cold_composed",
            full,
            measured="one gpu_verify_cold_pipeline run + one ocsp_stapled_cold run per sample",
            pipeline_ms=round(cold * 1e3, 4),
            ocsp_ms=round(ocsp_ms["issuer"] * 1e3, 4),
            pool_workers=workers,
            baseline_name="p384_verify",
            baseline_seconds=baseline,
        ),
        row(
            "gpu_verify_cold_one_thread",
            one_thread,
            measured="as gpu_verify_cold_composed, with the verification pool off (one thread)",
            baseline_name="p384_verify",
            baseline_seconds=baseline,
        ),
        row(
            "gpu_verify_cold_stapled",
            stapled,
            target_ms=COLD_TARGET_MS,
            meets_target_ms=stapled * 1e3 <= COLD_TARGET_MS,
            measured=(
                "one verify_gpu_evidence call, stapled mode, fresh caches, emulated Hopper"
                " evidence (report, chain, 2 RIMs with their own signers under NVIDIA's"
                " 4-certificate RIM PKI shape, 7 stapled OCSP responses)"
            ),
            pool_workers=workers,
            **stapled_facts,
            baseline_name="p384_verify",
            baseline_seconds=baseline,
        ),
        row(
            "gpu_verify_cold_stapled_one_thread",
            stapled_one_thread,
            measured="as gpu_verify_cold_stapled, with the verification pool off (one thread)",
            baseline_name="p384_verify",
            baseline_seconds=baseline,
        ),
        row("cli_gpu_verify_process", proc, first_run_ms=round(first * 1e3, 1)),
    ]
