"""The AMD CRLs a broker holds (``broker serve --amd-crls``) travel with every log entry as
``broker-amd-crl-<kind>-<product>`` collateral, and the replay checks each report against the
same held list, so a verdict that depended on it is reproduced offline.

Emulated SEV-SNP evidence (VCEK, Milan) carries a current ARK-signed CRL that does not list the
ASK -- the list a host would send -- while the broker holds the VCEK list that revokes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.audit.bundle import Bundle
from agent.audit.replay import replay_bundle_file
from agent.broker.appraiser import composite_appraiser
from agent.emulation import EmulatedSnp, EmulationPki
from attest.appraise.composite import AppraisalContext
from attest.binding import derive_session_binding
from attest.bundle import EvidenceBundle, SnpEvidenceIn
from attest.ear import Status, Submodule, verify_ear
from attest.log.entry import decode_entry
from attest.snp.report import Product, SigningKey
from tests.audit.helpers import MODEL, VERIFIER_KEY, Built, build, enclave_key
from tests.log.helpers import LOG_SIGNER

MEASUREMENT = hashlib.sha384(b"lessee held-CRL replay test").digest()


@dataclass
class Logged:
    built: Built
    held: bytes
    #: The whole result's (contraindicated both times: the policy needs a GPU, and these
    #: bundles carry none) and the CPU's submodule, which the CRLs decide.
    statuses: list[Status]
    cpu: list[Submodule]


def _broker(d: Path) -> tuple[EmulationPki, Built]:
    """An emulation PKI and a real broker whose policy needs the SEV-SNP CPU only."""
    pki = EmulationPki.create(d / "pki")
    policy = json.dumps(
        {
            "name": "held-crls",
            "cpu_tees": ["snp"],
            "snp": {"allowed_measurements": [MEASUREMENT.hex()]},
            "roots": {"extra_trusted_sha256": [pki.ark.sha256]},
        }
    )
    return pki, build(d, stand_in=False, policy_json=policy)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    d = tmp_path_factory.mktemp("held-crls")
    pki, b = _broker(d)
    b.clock.now = datetime.now(UTC).replace(microsecond=0)
    snp = EmulatedSnp(pki, measurement=MEASUREMENT)
    clean = snp.crl(b.clock.now)
    held = pki.amd_crl(at=b.clock.now, revoked_serials=(pki.ask.cert.serial_number,))
    statuses: list[Status] = []
    cpu: list[Submodule] = []
    for amd_crls in ({}, {(SigningKey.VCEK, Product.MILAN): held}):
        b.broker.appraiser = composite_appraiser(
            AppraisalContext(amd_extra_arks=(pki.ark.cert,), amd_crls=amd_crls)
        )
        status, submod = _attest(b, snp, clean)
        statuses.append(status)
        cpu.append(submod)
    b.export()
    yield Logged(b, held, statuses, cpu)
    b.close()


def _attest(b: Built, snp: EmulatedSnp, crl: bytes) -> tuple[Status, Submodule]:
    """One Attest of SEV-SNP evidence carrying ``crl``: the result's status and CPU submodule."""
    b.clock.tick()
    ch = b.broker.challenge(MODEL)
    key = enclave_key()
    # No GPUs: the bundle's flags are the defaults, bound under the broker's label.
    state = EvidenceBundle(cpu=None).device_state
    binding = derive_session_binding(ch.nonce, key, ch.protocol_label, state)
    bundle = EvidenceBundle(
        cpu=SnpEvidenceIn(snp.report(binding.report_data), snp.certificates(), crl)
    )
    out = b.broker.attest(nonce=ch.nonce, enclave_public_key=key, model_id=MODEL, bundle=bundle)
    claims = verify_ear(out.result, VERIFIER_KEY.public_key(), at=b.clock.now)
    return out.status, claims.submods["cpu0"]


def test_a_reload_between_entries_replays_each_with_its_own_list(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """One broker, its held list replaced mid-log (``CompositeAppraiser.reload``, what SIGHUP
    does): each entry archives the list it was checked against, so the replay reproduces the
    verdict before the reload and the one after it."""
    d = tmp_path_factory.mktemp("held-crls-reload")
    pki, b = _broker(d)
    try:
        b.clock.now = datetime.now(UTC).replace(microsecond=0)
        snp = EmulatedSnp(pki, measurement=MEASUREMENT)
        clean = snp.crl(b.clock.now)
        revoking = pki.amd_crl(at=b.clock.now, revoked_serials=(pki.ask.cert.serial_number,))
        appraiser = composite_appraiser(
            AppraisalContext(
                amd_extra_arks=(pki.ark.cert,), amd_crls={(SigningKey.VCEK, Product.MILAN): clean}
            )
        )
        b.broker.appraiser = appraiser
        before = _attest(b, snp, clean)[1].status
        appraiser.reload(rims=(), amd_crls={(SigningKey.VCEK, Product.MILAN): revoking})
        after = _attest(b, snp, clean)[1].status
        assert (before, after) == (Status.AFFIRMING, Status.CONTRAINDICATED)
        b.export()
        with Bundle(b.dir / "log.zip") as bundle:
            archived = [
                bundle.read_blob(c.sha256)
                for e in (decode_entry(r.data) for r in bundle.records)
                for c in e.collateral
                if c.role == "broker-amd-crl-vcek-milan"
            ]
        assert archived == [clean, revoking]
        report = replay_bundle_file(
            b.dir / "log.zip", LOG_SIGNER.verifier(), VERIFIER_KEY.public_key()
        )
        assert report.ok, [f.line() for f in report.all_findings]
        attests = [e for e in report.entries if e.kind.value == "attest"]
        assert len(attests) == 2 and all(e.verdict_equal for e in attests)
    finally:
        b.close()


def test_the_held_list_decides_and_is_archived(logged: Logged) -> None:
    # Without a held list the host's list passes; with it the revoked ASK is refused.
    assert [c.status for c in logged.cpu] == [Status.AFFIRMING, Status.CONTRAINDICATED]
    findings = [logged.cpu[i].extra.get("ear.lessee.findings", []) for i in (0, 1)]
    assert [[(f["field"], f["actual"]) for f in found] for found in findings] == [
        [],
        [("snp.verification", "revoked")],
    ]
    with Bundle(logged.built.dir / "log.zip") as bundle:
        entries = [decode_entry(r.data) for r in bundle.records]
        roles = [[c.role for c in e.collateral] for e in entries]
        assert roles == [
            ["trust-root-amd_ark-0"],
            ["broker-amd-crl-vcek-milan", "trust-root-amd_ark-0"],
        ]
        ref = entries[1].collateral[0]
        assert ref.media_type == "application/pkix-crl"
        assert bundle.read_blob(ref.sha256) == logged.held


def test_replay_reproduces_both_verdicts_with_the_archived_list(logged: Logged) -> None:
    report = replay_bundle_file(
        logged.built.dir / "log.zip", LOG_SIGNER.verifier(), VERIFIER_KEY.public_key()
    )
    assert report.ok, [f.line() for f in report.all_findings]
    attests = [e for e in report.entries if e.kind.value == "attest"]
    assert [e.recomputed_status for e in attests] == logged.statuses
    assert all(e.verdict_equal for e in attests)


@pytest.mark.parametrize(
    "roles",
    [
        ["broker-amd-crl-vcek-Milan"],  # the file name's case: log roles are lower case
        ["broker-amd-crl-vcek-rome"],
        ["broker-amd-crl-none-milan"],
        ["broker-amd-crl-vcek-milan", "broker-amd-crl-vcek-milan"],
    ],
)
def test_an_unknown_or_repeated_held_list_is_named_not_guessed(roles: list[str]) -> None:
    from types import SimpleNamespace

    from agent.audit.replay import EntryReplayer, _Stop

    found: list[tuple[str, str]] = []
    entry = SimpleNamespace(collateral=[SimpleNamespace(role=r, sha256=bytes(32)) for r in roles])
    with pytest.raises(_Stop):
        EntryReplayer._held_crls(
            entry,  # type: ignore[arg-type]
            lambda role, digest: b"crl",
            lambda code, message: found.append((code, message)),
        )
    assert [code for code, _ in found] == ["collateral_unknown"]
    assert roles[-1] in found[0][1]


def test_held_lists_are_read_by_kind_and_product() -> None:
    from types import SimpleNamespace

    from agent.audit.replay import EntryReplayer

    roles = ["trust-root-amd_ark-0", "broker-amd-crl-vlek-genoa", "broker-amd-crl-vcek-milan"]
    entry = SimpleNamespace(collateral=[SimpleNamespace(role=r, sha256=bytes(32)) for r in roles])
    held = EntryReplayer._held_crls(
        entry,  # type: ignore[arg-type]
        lambda role, digest: role.encode(),
        lambda code, message: pytest.fail(message),
    )
    assert held == {
        (SigningKey.VLEK, Product.GENOA): b"broker-amd-crl-vlek-genoa",
        (SigningKey.VCEK, Product.MILAN): b"broker-amd-crl-vcek-milan",
    }
