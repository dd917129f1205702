"""AMD CRLs the broker holds itself (``AppraisalContext.amd_crls``, ``verify_snp_report``'s
``held_crls``): checked instead of the evidence's CRL for reports of their kind and product.

Why: AMD's VCEK list (revoked ASKs) and VLEK list (revoked ASVKs) are both signed by the
product's ARK, so a host can send the list that does not name its revoked intermediate and pass.
Emulated SEV-SNP evidence (VCEK-signed, Milan) with CRLs signed by the emulated ARK: the
"wrong list" here is a current, ARK-signed CRL that does not list the ASK.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from attest.ear import Status
from attest.errors import InputError
from attest.snp.report import Product, SigningKey
from attest.snp.verify import (
    MAX_CRL_BYTES,
    held_crl_name,
    load_held_crl,
    parse_held_crl_name,
)
from tests.appraise.test_composite_caches import Setup, _cpu_detail

VCEK_MILAN = (SigningKey.VCEK, Product.MILAN)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tmp_path_factory.mktemp("held-crls") / "pki")


def _revoking(setup: Setup, at: datetime) -> bytes:
    return setup.pki.amd_crl(at=at, revoked_serials=(setup.pki.ask.cert.serial_number,))


def _ctx(setup: Setup, held: dict[tuple[SigningKey, Product], bytes]):  # type: ignore[no-untyped-def]
    ctx = setup.context()
    return ctx.sharing_caches(
        rims=ctx.rims, candidates=ctx.candidates, amd_extra_arks=ctx.amd_extra_arks, amd_crls=held
    )


def test_held_list_replaces_the_evidence_list(setup: Setup) -> None:
    """The host's clean (wrong) list passes on its own; the held list that revokes the ASK wins."""
    at = datetime.now(UTC)
    session = setup.session()  # carries the clean CRL
    assert _cpu_detail(setup, setup.context(), session, at) == (Status.AFFIRMING, [])
    held = _ctx(setup, {VCEK_MILAN: _revoking(setup, at)})
    assert _cpu_detail(setup, held, session, at) == (
        Status.CONTRAINDICATED,
        [("snp.verification", "revoked", "reject")],
    )


def test_held_list_checks_evidence_that_came_without_one(setup: Setup) -> None:
    at = datetime.now(UTC)
    session = setup.session(crl=None)
    assert _cpu_detail(setup, setup.context(), session, at)[1] == [
        ("snp.revocation", "missing", "reject")
    ]
    assert _cpu_detail(setup, _ctx(setup, {VCEK_MILAN: setup.crl}), session, at) == (
        Status.AFFIRMING,
        [],
    )


@pytest.mark.parametrize(
    "key", [(SigningKey.VLEK, Product.MILAN), (SigningKey.VCEK, Product.GENOA)]
)
def test_held_list_of_another_kind_or_product_is_not_used(
    setup: Setup, key: tuple[SigningKey, Product]
) -> None:
    at = datetime.now(UTC)
    held = _ctx(setup, {key: _revoking(setup, at)})
    assert _cpu_detail(setup, held, setup.session(), at) == (Status.AFFIRMING, [])
    assert _cpu_detail(setup, held, setup.session(crl=None), at)[1] == [
        ("snp.revocation", "missing", "reject")
    ]


def test_stale_held_list_fails_closed_even_with_a_current_evidence_list(setup: Setup) -> None:
    """A held list past its nextUpdate refuses every report of its kind: the operator must
    refresh it; the host's current list does not stand in for it."""
    old = setup.made - timedelta(days=30)
    stale = setup.pki.amd_crl(at=old, revoked_serials=(123,))  # made fresh, not the cached one
    at = datetime.now(UTC)
    assert x509.load_der_x509_crl(stale).next_update_utc < at  # type: ignore[operator]
    verdict = _cpu_detail(setup, _ctx(setup, {VCEK_MILAN: stale}), setup.session(), at)
    assert verdict == (Status.CONTRAINDICATED, [("snp.verification", "crl_stale", "reject")])


def test_names_round_trip_and_nothing_else_parses() -> None:
    for kind in (SigningKey.VCEK, SigningKey.VLEK):
        for product in Product:
            assert parse_held_crl_name(held_crl_name(kind, product)) == (kind, product)
    assert held_crl_name(SigningKey.VLEK, Product.GENOA) == "vlek-Genoa"
    for bad in ("", "vcek", "vcek-", "-Milan", "none-Milan", "VCEK-Milan", "vcek-milan",
                "vcek-Milan-x", "vcek_Milan", "vcek-Milan.crl"):  # fmt: skip
        assert parse_held_crl_name(bad) is None, bad


def test_load_held_crl_checks_what_it_can_without_a_report(setup: Setup) -> None:
    crl = setup.crl
    assert load_held_crl(crl, *VCEK_MILAN) == crl
    pem = x509.load_der_x509_crl(crl).public_bytes(Encoding.PEM)
    assert load_held_crl(pem, SigningKey.VLEK, Product.MILAN) == pem
    with pytest.raises(InputError, match="not 'ARK-Genoa'"):
        load_held_crl(crl, SigningKey.VCEK, Product.GENOA)
    with pytest.raises(InputError, match="malformed CRL"):
        load_held_crl(crl[:-1], *VCEK_MILAN)
    with pytest.raises(InputError, match="limit"):
        load_held_crl(b"\x30" * (MAX_CRL_BYTES + 1), *VCEK_MILAN)


def test_broker_loads_a_directory_of_named_lists(setup: Setup, tmp_path: Path) -> None:
    from agent.rpc.server import load_amd_crls

    d = tmp_path / "crls"
    d.mkdir()
    (d / "vcek-Milan.crl").write_bytes(setup.crl)
    (d / "vlek-Milan.crl").write_bytes(setup.crl)
    assert load_amd_crls(d) == {VCEK_MILAN: setup.crl, (SigningKey.VLEK, Product.MILAN): setup.crl}
    (d / "Milan.crl").write_bytes(setup.crl)
    with pytest.raises(InputError, match=r"name them <kind>-<product>\.crl"):
        load_amd_crls(d)
    (d / "Milan.crl").unlink()
    (d / "vcek-Genoa.crl").write_bytes(setup.crl)  # a Milan list under a Genoa name
    with pytest.raises(InputError, match="vcek-Genoa: CRL issuer"):
        load_amd_crls(d)
    with pytest.raises(InputError, match="not a directory"):
        load_amd_crls(tmp_path / "absent")


def test_broker_build_reads_the_held_lists_and_refuses_a_bad_directory(
    setup: Setup, tmp_path: Path
) -> None:
    """``broker serve --amd-crls DIR`` -> ``BrokerConfig.amd_crls_dir`` -> the appraiser's
    context: the held list is archived with each decision (the collateral it returns), and a
    directory with a misnamed file stops the broker before it serves."""
    from agent.broker.config import BrokerConfig
    from agent.rpc.server import build_broker

    d = tmp_path / "crls"
    d.mkdir()
    (d / "vcek-Milan.crl").write_bytes(setup.crl)
    broker, res, _ = build_broker(BrokerConfig(state_dir=tmp_path / "state", amd_crls_dir=d))
    try:
        session = setup.session(crl=None)
        appraisal = broker.appraiser(session[0], session[1], setup.policy, datetime.now(UTC))
        assert ("broker-amd-crl-vcek-milan", "application/pkix-crl", setup.crl) in (
            appraisal.collateral
        )
    finally:
        res.log.close()
        res.store.close()
    (d / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not an AMD CRL file"):
        build_broker(BrokerConfig(state_dir=tmp_path / "state2", amd_crls_dir=d))
