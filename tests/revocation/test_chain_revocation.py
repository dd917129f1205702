"""StapledOcsp indexing and check_chain_revocation in all three modes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from attest.errors import InputError, ParseError, RevocationError
from attest.revocation import (
    MAX_OCSP_RESPONSE_BYTES,
    NVIDIA_DEVICE_OCSP_INDICES,
    OcspCache,
    OcspSource,
    RevocationMode,
    StapledOcsp,
    check_chain_revocation,
)
from attest.revocation.ocsp import MAX_STAPLED_RESPONSES
from attest.x509chain import load_pem_chain
from tests.conftest import NVIDIA, TODAY
from tests.revocation.pki import NOW, SERIAL_LEAF, TestPki, batch, make_response

LEAF_AND_INTERMEDIATE = (0, 1)


# --- StapledOcsp ----------------------------------------------------------------------------


def test_stapled_answers_by_cert_id(pki: TestPki, cases: dict[str, bytes]) -> None:
    stapled = StapledOcsp([cases["intermediate_good"], cases["good"]])
    assert isinstance(stapled, OcspSource)
    assert stapled.response_for(pki.leaf, pki.intermediate) == cases["good"]
    assert stapled.response_for(pki.intermediate, pki.root) == cases["intermediate_good"]
    assert stapled.response_for(pki.root, pki.root) is None
    assert len(stapled) == 2 and stapled.responses[0] == cases["intermediate_good"]


def test_stapled_indexes_any_cert_id_hash(pki: TestPki, cases: dict[str, bytes]) -> None:
    for name in ("sha1_cert_id", "sha256_cert_id"):
        assert StapledOcsp([cases[name]]).response_for(pki.leaf, pki.intermediate) == cases[name]


def test_stapled_wrong_issuer_hash_is_not_found(pki: TestPki, cases: dict[str, bytes]) -> None:
    stapled = StapledOcsp([cases["wrong_issuer_key"], cases["wrong_serial"]])
    assert stapled.response_for(pki.leaf, pki.intermediate) is None


def test_stapled_prefers_newest(pki: TestPki) -> None:
    old = make_response(
        pki, this_update=NOW - timedelta(days=2), next_update=NOW - timedelta(days=1)
    )
    new = make_response(pki)
    for order in ([old, new], [new, old]):
        assert StapledOcsp(order).response_for(pki.leaf, pki.intermediate) == new


def test_stapled_indexes_every_single_of_a_batch(pki: TestPki) -> None:
    der = batch(
        make_response(pki, serial=SERIAL_LEAF + 1),
        make_response(pki),
        key=pki.intermediate_key,
    )
    assert StapledOcsp([der]).response_for(pki.leaf, pki.intermediate) == der


@pytest.mark.parametrize("name", ["malformed", "try_later", "unauthorized"])
def test_stapled_refuses_unindexable(cases: dict[str, bytes], name: str) -> None:
    with pytest.raises(ParseError) as e:
        StapledOcsp([cases["good"], cases[name]])
    assert "#2" in str(e.value)


def test_stapled_bounds(cases: dict[str, bytes]) -> None:
    with pytest.raises(InputError):
        StapledOcsp([b"\x30" * (MAX_OCSP_RESPONSE_BYTES + 1)])
    with pytest.raises(InputError):
        StapledOcsp([cases["good"]] * (MAX_STAPLED_RESPONSES + 1))


# --- check_chain_revocation -----------------------------------------------------------------


def test_stapled_chain_all_good(pki: TestPki, cases: dict[str, bytes]) -> None:
    stapled = StapledOcsp([cases["good"], cases["intermediate_good"]])
    checks = check_chain_revocation(
        pki.chain,
        indices=LEAF_AND_INTERMEDIATE,
        mode=RevocationMode.STAPLED,
        source=stapled,
        at=NOW,
    )
    assert [(c.subject, c.status, c.ok) for c in checks] == [
        ("Leaf", "good", True),
        ("OCSP Intermediate", "good", True),
    ]


def test_stapled_chain_one_missing(pki: TestPki, cases: dict[str, bytes]) -> None:
    checks = check_chain_revocation(
        pki.chain,
        indices=LEAF_AND_INTERMEDIATE,
        mode="stapled",
        source=StapledOcsp([cases["good"]]),
        at=NOW,
    )
    assert [c.status for c in checks] == ["good", "missing"]
    assert not checks[1].ok and checks[1].code == "missing"


def test_stapled_chain_revoked_and_hold(pki: TestPki, cases: dict[str, bytes]) -> None:
    stapled = StapledOcsp([cases["certificate_hold"], cases["intermediate_good"]])
    strict = check_chain_revocation(
        pki.chain, indices=(0, 1), mode="stapled", source=stapled, at=NOW
    )
    lenient = check_chain_revocation(
        pki.chain, indices=(0, 1), mode="stapled", source=stapled, at=NOW, allow_hold=True
    )
    assert [c.ok for c in strict] == [False, True]
    assert [c.ok for c in lenient] == [True, True]
    revoked = check_chain_revocation(
        pki.chain, indices=(0,), mode="stapled", source=StapledOcsp([cases["revoked"]]), at=NOW
    )
    assert revoked[0].status == "revoked" and revoked[0].revocation_reason == "key_compromise"


def test_skip_mode_is_never_ok(pki: TestPki, cases: dict[str, bytes]) -> None:
    checks = check_chain_revocation(
        pki.chain,
        indices=LEAF_AND_INTERMEDIATE,
        mode=RevocationMode.SKIP,
        source=StapledOcsp([cases["good"]]),  # ignored: skip means skip
        at=NOW,
    )
    assert [(c.status, c.ok) for c in checks] == [("skipped", False), ("skipped", False)]


def test_no_source_is_missing(pki: TestPki) -> None:
    for mode in (RevocationMode.ONLINE, RevocationMode.STAPLED):
        checks = check_chain_revocation(pki.chain, indices=(0,), mode=mode, source=None, at=NOW)
        assert checks[0].status == "missing" and mode.value in checks[0].detail


class _Offline:
    """An OcspSource whose network is down (what OnlineOcsp raises when offline)."""

    def response_for(self, cert: x509.Certificate, issuer: x509.Certificate) -> bytes | None:
        raise RevocationError("no route to host", reason="ocsp_unreachable")


class _Recording:
    def __init__(self, answers: dict[int, bytes]) -> None:
        self.answers = answers
        self.asked: list[tuple[int, int]] = []

    def response_for(self, cert: x509.Certificate, issuer: x509.Certificate) -> bytes | None:
        self.asked.append((cert.serial_number, issuer.serial_number))
        return self.answers.get(cert.serial_number)


def test_online_mode_offline_source_gives_missing(pki: TestPki) -> None:
    checks = check_chain_revocation(
        pki.chain, indices=(0, 1), mode="online", source=_Offline(), at=NOW
    )
    assert [(c.status, c.code) for c in checks] == [("missing", "ocsp_unreachable")] * 2
    assert "no route to host" in checks[0].detail


def test_online_mode_asks_with_the_right_issuer(pki: TestPki, cases: dict[str, bytes]) -> None:
    source = _Recording({pki.leaf.serial_number: cases["good"]})
    checks = check_chain_revocation(pki.chain, indices=(0, 1), mode="online", source=source, at=NOW)
    assert source.asked == [
        (pki.leaf.serial_number, pki.intermediate.serial_number),
        (pki.intermediate.serial_number, pki.root.serial_number),
    ]
    assert [c.status for c in checks] == ["good", "missing"]


def test_source_answer_is_verified_not_trusted(pki: TestPki, cases: dict[str, bytes]) -> None:
    source = _Recording({pki.leaf.serial_number: cases["wrong_signer_rogue_self"]})
    (check,) = check_chain_revocation(pki.chain, indices=(0,), mode="online", source=source, at=NOW)
    assert (check.status, check.code) == ("invalid", "unauthorized_responder")


def test_chain_uses_cache(pki: TestPki, cases: dict[str, bytes]) -> None:
    stapled = StapledOcsp([cases["good"], cases["intermediate_good"]])
    cache = OcspCache()
    for _ in range(3):
        checks = check_chain_revocation(
            pki.chain, indices=(0, 1), mode="stapled", source=stapled, at=NOW, cache=cache
        )
        assert all(c.ok for c in checks)
    assert cache.hits == 4 and cache.misses == 2


def test_caller_errors(pki: TestPki) -> None:
    with pytest.raises(InputError):
        check_chain_revocation(pki.chain, indices=(2,), mode="skip", source=None, at=NOW)
    with pytest.raises(InputError):
        check_chain_revocation(pki.chain, indices=(-1,), mode="skip", source=None, at=NOW)
    with pytest.raises(InputError):
        check_chain_revocation(pki.chain, indices=(0,), mode="sometimes", source=None, at=NOW)


def test_real_hopper_chain_stapled_without_responses() -> None:
    chain = load_pem_chain((NVIDIA / "hopper/hopperCertChain.txt").read_bytes())
    checks = check_chain_revocation(
        chain,
        indices=NVIDIA_DEVICE_OCSP_INDICES,
        mode="stapled",
        source=StapledOcsp([]),
        at=TODAY,
    )
    assert [c.subject for c in checks] == [
        "GH100 A01 GSP BROM",
        "NVIDIA GH100 Provisioner ICA 1",
        "NVIDIA GH100 Identity",
    ]
    assert all(c.status == "missing" and not c.ok for c in checks)
    skipped = check_chain_revocation(
        chain, indices=NVIDIA_DEVICE_OCSP_INDICES, mode="skip", source=None, at=TODAY
    )
    assert [c.serial for c in skipped] == [chain[i].serial_number for i in (1, 2, 3)]
    assert all(c.status == "skipped" for c in skipped)


def test_stapled_sha1_and_sha384_both_served(pki: TestPki) -> None:
    sha1 = make_response(pki, cert_id_hash=hashes.SHA1())
    stapled = StapledOcsp([sha1])
    (check,) = check_chain_revocation(
        pki.chain, indices=(0,), mode="stapled", source=stapled, at=NOW
    )
    assert (check.status, check.cert_id_hash) == ("good", "sha1")


def test_generator_writes_usable_files(tmp_path: Path) -> None:
    from tests.revocation.pki import main

    assert main([str(tmp_path)]) == 0
    chain = load_pem_chain((tmp_path / "chain.pem").read_bytes())
    stapled = StapledOcsp([(tmp_path / "good.der").read_bytes()])
    (check,) = check_chain_revocation(chain, indices=(0,), mode="stapled", source=stapled, at=NOW)
    assert check.ok
