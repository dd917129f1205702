"""check_ocsp_response on every case of the synthetic PKI, plus requests on the real NVIDIA chains."""

from __future__ import annotations

import hashlib
import re
from base64 import b64decode
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp

from attest import roots
from attest.errors import InputError
from attest.revocation import (
    CLOCK_SKEW,
    DEFAULT_MAX_AGE,
    MAX_OCSP_RESPONSE_BYTES,
    NVIDIA_DEVICE_OCSP_INDICES,
    OcspCache,
    StapledOcsp,
    build_ocsp_request,
    cert_id_key,
    check_chain_revocation,
    check_ocsp_response,
    nvidia_device_ocsp_indices,
    nvidia_rim_ocsp_indices,
)
from attest.x509chain import load_pem_chain
from tests.conftest import NVIDIA, TODAY
from tests.revocation.pki import (
    NEXT_UPDATE,
    NONCE,
    NOW,
    REVOKED_AT,
    SERIAL_LEAF,
    THIS_UPDATE,
    TestPki,
    _basic,
    _children,
    _tlv,
    batch,
    cert_id_hashes,
    make_response,
    resign,
)

# --- verified statuses ----------------------------------------------------------------------


def test_good_signed_by_issuer(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(cases["good"], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.ok, c.code, c.responder) == ("good", True, "good", "issuer")
    assert c.subject == "Leaf" and c.serial == SERIAL_LEAF
    assert c.this_update == THIS_UPDATE and c.next_update == NEXT_UPDATE
    assert c.produced_at == THIS_UPDATE
    assert c.cert_id_hash == "sha384"
    assert c.response_der == cases["good"]
    assert c.revocation_reason is None and c.revocation_time is None


def test_good_with_responder_id_by_name(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(cases["good_by_name"], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.ok, c.responder) == ("good", True, "issuer")


def test_intermediate_checked_against_root(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(
        cases["intermediate_good"], cert=pki.intermediate, issuer=pki.root, at=NOW
    )
    assert (c.status, c.ok, c.subject) == ("good", True, "OCSP Intermediate")


def test_revoked_reports_reason_and_time(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(cases["revoked"], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.ok) == ("revoked", False)
    assert c.revocation_reason == "key_compromise"
    assert c.revocation_time == REVOKED_AT
    assert "key_compromise" in c.detail and "2026-10-01" in c.detail


def test_revoked_is_never_ok_even_with_allow_hold(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(
        cases["revoked"], cert=pki.leaf, issuer=pki.intermediate, at=NOW, allow_hold=True
    )
    assert (c.status, c.ok) == ("revoked", False)


def test_hold_rejected_by_default(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(
        cases["certificate_hold"], cert=pki.leaf, issuer=pki.intermediate, at=NOW
    )
    assert (c.status, c.ok, c.is_warning) == ("certificate_hold", False, False)
    assert c.revocation_reason == "certificate_hold"


def test_hold_accepted_only_when_allowed(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(
        cases["certificate_hold"], cert=pki.leaf, issuer=pki.intermediate, at=NOW, allow_hold=True
    )
    assert (c.status, c.ok, c.is_warning) == ("certificate_hold", True, True)


def test_unknown_is_not_ok(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(cases["unknown"], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.ok, c.code) == ("unknown", False, "unknown")


@pytest.mark.parametrize("name", ["sha1_cert_id", "sha256_cert_id", "good"])
def test_cert_id_hash_algorithms_all_match(
    pki: TestPki, cases: dict[str, bytes], name: str
) -> None:
    c = check_ocsp_response(cases[name], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert c.status == "good"
    assert c.cert_id_hash == {"sha1_cert_id": "sha1", "sha256_cert_id": "sha256"}.get(
        name, "sha384"
    )


def test_sha1_cert_id_is_still_checked(pki: TestPki) -> None:
    """A SHA-1 CertID for another serial must not match just because SHA-1 is weak."""
    der = make_response(pki, cert_id_hash=hashes.SHA1(), serial=SERIAL_LEAF + 7)
    c = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.code) == ("invalid", "wrong_certificate")


# --- delegated responders -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "label"),
    [("delegated", "OCSP Responder"), ("delegated_ed25519", "OCSP Responder Ed25519")],
)
def test_delegated_responder_with_eku(
    pki: TestPki, cases: dict[str, bytes], name: str, label: str
) -> None:
    c = check_ocsp_response(cases[name], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.ok, c.responder) == ("good", True, label)


def test_delegated_responder_without_eku(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(
        cases["delegated_no_eku"], cert=pki.leaf, issuer=pki.intermediate, at=NOW
    )
    assert (c.status, c.code) == ("invalid", "unauthorized_responder")
    assert "OCSPSigning" in c.detail


def test_expired_responder(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(
        cases["delegated_expired"], cert=pki.leaf, issuer=pki.intermediate, at=NOW
    )
    assert (c.status, c.code) == ("invalid", "responder_expired")


def test_expired_responder_was_fine_while_valid(pki: TestPki) -> None:
    """Same responder certificate, judged at a time inside its validity: accepted."""
    at = datetime(2025, 6, 1, tzinfo=UTC)
    der = make_response(
        pki,
        signer="responder_expired",
        this_update=at - timedelta(hours=1),
        next_update=at + timedelta(days=1),
    )
    c = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=at)
    assert (c.status, c.responder) == ("good", "OCSP Responder expired")


def test_responder_not_yet_valid(pki: TestPki) -> None:
    at = datetime(2024, 6, 1, tzinfo=UTC)  # before every test certificate
    der = make_response(
        pki, signer="responder", this_update=at - timedelta(hours=1), next_update=at
    )
    c = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=at)
    assert (c.status, c.code) == ("invalid", "responder_not_yet_valid")


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("wrong_signer_rogue_self", "unauthorized_responder"),
        ("wrong_signer_rogue_by_root", "unauthorized_responder"),
        ("wrong_signer_as_issuer", "bad_signature"),
    ],
)
def test_wrong_signer(pki: TestPki, cases: dict[str, bytes], name: str, code: str) -> None:
    c = check_ocsp_response(cases[name], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.ok, c.code) == ("invalid", False, code)


def test_response_for_leaf_judged_against_wrong_issuer(
    pki: TestPki, cases: dict[str, bytes]
) -> None:
    """The root did not sign it and did not authorise the intermediate as a responder."""
    c = check_ocsp_response(cases["good"], cert=pki.leaf, issuer=pki.root, at=NOW)
    assert (c.status, c.code) == ("invalid", "unauthorized_responder")


def test_tampered_signature_byte(pki: TestPki, cases: dict[str, bytes]) -> None:
    der = bytearray(cases["good"])
    der[-5] ^= 0x01  # inside the ECDSA signature (no certs follow it)
    c = check_ocsp_response(bytes(der), cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert c.status == "invalid"
    assert c.code in {"bad_signature", "malformed"}


def test_tampered_status_byte_breaks_signature(pki: TestPki, cases: dict[str, bytes]) -> None:
    """Turn 'revoked' into 'good' by hand: the signature no longer verifies."""
    good = make_response(pki)
    der = cases["unknown"]
    # certStatus unknown is [2] IMPLICIT NULL (82 00); good is [0] (80 00).
    assert der.count(b"\x82\x00") == 1
    forged = der.replace(b"\x82\x00", b"\x80\x00")
    c = check_ocsp_response(forged, cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.code) == ("invalid", "bad_signature")
    assert check_ocsp_response(good, cert=pki.leaf, issuer=pki.intermediate, at=NOW).ok


# --- the response is about this certificate ---------------------------------------------------


@pytest.mark.parametrize("name", ["wrong_serial", "wrong_issuer_name", "wrong_issuer_key"])
def test_wrong_certificate(pki: TestPki, cases: dict[str, bytes], name: str) -> None:
    c = check_ocsp_response(cases[name], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.ok, c.code) == ("invalid", False, "wrong_certificate")


def test_good_response_for_one_cert_is_not_good_for_another(
    pki: TestPki, cases: dict[str, bytes]
) -> None:
    """NVIDIA's verifier would accept this: a valid 'good' about the intermediate, replayed."""
    c = check_ocsp_response(
        cases["intermediate_good"], cert=pki.leaf, issuer=pki.intermediate, at=NOW
    )
    assert c.status == "invalid"


def test_batched_response_finds_the_right_single(pki: TestPki) -> None:
    der = batch(
        make_response(pki, serial=SERIAL_LEAF + 1, status="revoked"),
        make_response(pki),
        key=pki.intermediate_key,
    )
    assert len(list(ocsp.load_der_ocsp_response(der).responses)) == 2
    c = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.ok) == ("good", True)


def test_batched_response_without_our_cert(pki: TestPki) -> None:
    der = batch(
        make_response(pki, serial=SERIAL_LEAF + 1),
        make_response(pki, serial=SERIAL_LEAF + 2),
        key=pki.intermediate_key,
    )
    c = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.code) == ("invalid", "wrong_certificate")
    assert "1004" in c.detail and "1005" in c.detail


# --- time -----------------------------------------------------------------------------------


def test_stale(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(cases["stale"], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.code) == ("invalid", "stale")
    assert "nextUpdate" in c.detail


def test_not_yet_valid(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(cases["not_yet_valid"], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.code) == ("invalid", "not_yet_valid")


def test_clock_skew_boundaries(pki: TestPki) -> None:
    der = make_response(pki, this_update=NOW + CLOCK_SKEW, next_update=NOW + timedelta(days=1))
    assert check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=NOW).ok
    later = NOW + CLOCK_SKEW + timedelta(seconds=1)
    der = make_response(pki, this_update=later, next_update=NOW + timedelta(days=1))
    c = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert c.code == "not_yet_valid"


def test_next_update_is_inclusive_and_has_no_skew(pki: TestPki, cases: dict[str, bytes]) -> None:
    good = cases["good"]
    assert check_ocsp_response(good, cert=pki.leaf, issuer=pki.intermediate, at=NEXT_UPDATE).ok
    c = check_ocsp_response(
        good, cert=pki.leaf, issuer=pki.intermediate, at=NEXT_UPDATE + timedelta(seconds=1)
    )
    assert c.code == "stale"


def test_missing_next_update_uses_default_max_age(pki: TestPki, cases: dict[str, bytes]) -> None:
    der = cases["no_next_update"]
    edge = THIS_UPDATE + DEFAULT_MAX_AGE
    assert check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=edge).ok
    c = check_ocsp_response(
        der, cert=pki.leaf, issuer=pki.intermediate, at=edge + timedelta(seconds=1)
    )
    assert c.code == "stale"
    assert "default max age" in c.detail


def test_explicit_max_age_tightens(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(
        cases["good"],
        cert=pki.leaf,
        issuer=pki.intermediate,
        at=NOW,
        max_age=timedelta(minutes=30),  # thisUpdate was an hour ago
    )
    assert c.code == "stale"
    assert "max_age" in c.detail


def test_naive_time_is_a_caller_error(pki: TestPki, cases: dict[str, bytes]) -> None:
    with pytest.raises(InputError):
        check_ocsp_response(
            cases["good"], cert=pki.leaf, issuer=pki.intermediate, at=datetime(2026, 11, 28)
        )


# --- nonce, extensions, bytes ----------------------------------------------------------------


def test_nonce_matches(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(
        cases["nonce"], cert=pki.leaf, issuer=pki.intermediate, at=NOW, expected_nonce=NONCE
    )
    assert c.ok


def test_nonce_mismatch(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(
        cases["nonce"], cert=pki.leaf, issuer=pki.intermediate, at=NOW, expected_nonce=b"x" * 32
    )
    assert (c.status, c.code) == ("invalid", "nonce_mismatch")


def test_nonce_missing(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(
        cases["good"], cert=pki.leaf, issuer=pki.intermediate, at=NOW, expected_nonce=NONCE
    )
    assert (c.status, c.code) == ("invalid", "nonce_missing")


def test_nonce_not_required_for_stapled(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(cases["nonce"], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert c.ok


def test_unknown_critical_extension_refused(pki: TestPki) -> None:
    der = make_response(pki, critical_extension=True)
    c = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.code) == ("invalid", "unsupported_critical_extension")


@pytest.mark.parametrize("name", ["try_later", "unauthorized"])
def test_unsuccessful_status(pki: TestPki, cases: dict[str, bytes], name: str) -> None:
    c = check_ocsp_response(cases[name], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.code) == ("invalid", "unsuccessful_status")
    assert name in c.detail


def test_malformed(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(cases["malformed"], cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.ok, c.code) == ("invalid", False, "malformed")


def _repeat_response_extensions(pki: TestPki, der: bytes) -> bytes:
    """``der`` re-signed by the issuer with its responseExtensions listed twice."""
    tbs = _children(_basic(der)[0])
    i = next(j for j, part in enumerate(tbs) if part[0] == 0xA1)
    extensions = _children(_children(tbs[i])[0])
    tbs[i] = _tlv(0xA1, _tlv(0x30, b"".join(extensions * 2)))
    return resign(der, pki.intermediate_key, tbs=_tlv(0x30, b"".join(tbs)))


def _repeat_single_extension(pki: TestPki, der: bytes) -> bytes:
    """``der`` re-signed by the issuer with an invalidityDate singleExtension given twice."""
    tbs = _children(_basic(der)[0])
    (single,) = _children(tbs[2])
    invalidity = _tlv(
        0x30, _tlv(0x06, bytes.fromhex("551d18")) + _tlv(0x04, _tlv(0x18, b"20261001000000Z"))
    )
    extended = b"".join(_children(single)) + _tlv(0xA1, _tlv(0x30, invalidity * 2))
    tbs[2] = _tlv(0x30, _tlv(0x30, extended))
    return resign(der, pki.intermediate_key, tbs=_tlv(0x30, b"".join(tbs)))


@pytest.mark.parametrize("where", ["response", "single"])
def test_repeated_extension_is_malformed_not_an_exception(pki: TestPki, where: str) -> None:
    # cryptography decodes extensions on first access and raises DuplicateExtension, which is
    # not a ValueError: it once escaped the check (and the broker's appraisal) untyped.
    der = (
        _repeat_response_extensions(pki, make_response(pki, nonce=NONCE))
        if where == "response"
        else _repeat_single_extension(pki, make_response(pki))
    )
    c = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.ok, c.code) == ("invalid", False, "malformed")
    (checked,) = check_chain_revocation(
        pki.chain, indices=[0], mode="stapled", source=StapledOcsp([der]), at=NOW
    )
    assert (checked.status, checked.code) == ("invalid", "malformed")


def test_trailing_byte_refused(pki: TestPki, cases: dict[str, bytes]) -> None:
    c = check_ocsp_response(cases["good"] + b"\x00", cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.code) == ("invalid", "malformed")


def test_oversized_is_invalid_not_an_exception(pki: TestPki) -> None:
    c = check_ocsp_response(
        b"\x30" * (MAX_OCSP_RESPONSE_BYTES + 1), cert=pki.leaf, issuer=pki.intermediate, at=NOW
    )
    assert (c.status, c.code) == ("invalid", "too_large")
    assert c.response_der is None


# --- cache ----------------------------------------------------------------------------------


def test_cache_hits_inside_window_only(pki: TestPki, cases: dict[str, bytes]) -> None:
    cache = OcspCache()
    args = {"cert": pki.leaf, "issuer": pki.intermediate, "cache": cache}
    first = check_ocsp_response(cases["good"], at=NOW, **args)  # type: ignore[arg-type]
    again = check_ocsp_response(cases["good"], at=NOW + timedelta(days=1), **args)  # type: ignore[arg-type]
    assert first is again and cache.hits == 1
    late = check_ocsp_response(cases["good"], at=NEXT_UPDATE + timedelta(seconds=1), **args)  # type: ignore[arg-type]
    assert late.code == "stale" and cache.hits == 1
    early = check_ocsp_response(cases["good"], at=THIS_UPDATE - timedelta(hours=1), **args)  # type: ignore[arg-type]
    assert early.code == "not_yet_valid" and cache.hits == 1


def test_cache_key_covers_options(pki: TestPki, cases: dict[str, bytes]) -> None:
    cache = OcspCache()
    hold = cases["certificate_hold"]
    strict = check_ocsp_response(hold, cert=pki.leaf, issuer=pki.intermediate, at=NOW, cache=cache)
    lenient = check_ocsp_response(
        hold, cert=pki.leaf, issuer=pki.intermediate, at=NOW, cache=cache, allow_hold=True
    )
    assert (strict.ok, lenient.ok) == (False, True)
    other = check_ocsp_response(hold, cert=pki.intermediate, issuer=pki.root, at=NOW, cache=cache)
    assert other.status == "invalid"
    assert cache.hits == 0


def test_cache_key_tells_no_max_age_from_a_zero_max_age(
    pki: TestPki, cases: dict[str, bytes]
) -> None:
    """``timedelta(0)`` is falsy: the key once spelled it like ``None``, so a verdict cached
    with no age bound was reused for a max_age=0 check that a full check calls stale."""
    der = cases["good"]
    uncached = check_ocsp_response(
        der, cert=pki.leaf, issuer=pki.intermediate, at=NOW, max_age=timedelta(0)
    )
    assert (uncached.ok, uncached.code) == (False, "stale")
    cache = OcspCache()
    unbounded = check_ocsp_response(
        der, cert=pki.leaf, issuer=pki.intermediate, at=NOW, cache=cache
    )
    assert unbounded.ok
    strict = check_ocsp_response(
        der, cert=pki.leaf, issuer=pki.intermediate, at=NOW, max_age=timedelta(0), cache=cache
    )
    assert (strict.ok, strict.code, cache.hits) == (False, "stale", 0)

    def key(max_age: timedelta | None) -> bytes:
        return OcspCache.key(
            der, pki.leaf, pki.intermediate, allow_hold=False, expected_nonce=None, max_age=max_age
        )

    ages = [None, timedelta(0), timedelta(microseconds=1), timedelta(days=1)]
    assert len({key(a) for a in ages}) == len(ages)
    # Exact, not float seconds: ages a microsecond apart past float precision stay distinct.
    big = timedelta(days=999_999_999)
    assert key(big) != key(big - timedelta(microseconds=1))
    assert key(timedelta(hours=24)) == key(timedelta(days=1))


def test_cache_never_stores_invalid(pki: TestPki, cases: dict[str, bytes]) -> None:
    cache = OcspCache()
    for _ in range(2):
        check_ocsp_response(
            cases["wrong_signer_as_issuer"],
            cert=pki.leaf,
            issuer=pki.intermediate,
            at=NOW,
            cache=cache,
        )
    assert len(cache) == 0 and cache.hits == 0


def test_cache_window_respects_responder_validity(pki: TestPki) -> None:
    at = datetime(2025, 12, 31, 12, tzinfo=UTC)  # responder_expired dies 2026-01-01
    der = make_response(
        pki, signer="responder_expired", this_update=at, next_update=at + timedelta(days=7)
    )
    cache = OcspCache()
    kw = {"cert": pki.leaf, "issuer": pki.intermediate, "cache": cache}
    assert check_ocsp_response(der, at=at, **kw).ok  # type: ignore[arg-type]
    after = check_ocsp_response(der, at=datetime(2026, 1, 2, tzinfo=UTC), **kw)  # type: ignore[arg-type]
    assert after.code == "responder_expired"


def test_cache_is_bounded(pki: TestPki, cases: dict[str, bytes]) -> None:
    cache = OcspCache(max_entries=2)
    for name in ("good", "nonce", "sha1_cert_id"):
        check_ocsp_response(
            cases[name], cert=pki.leaf, issuer=pki.intermediate, at=NOW, cache=cache
        )
    assert len(cache) == 2


# --- requests -------------------------------------------------------------------------------


def test_request_matches_cryptography_and_carries_critical_nonce(pki: TestPki) -> None:
    der = build_ocsp_request(pki.leaf, pki.intermediate, nonce=NONCE)
    req = ocsp.load_der_ocsp_request(der)
    assert req.serial_number == SERIAL_LEAF
    assert isinstance(req.hash_algorithm, hashes.SHA384)
    assert (req.issuer_name_hash, req.issuer_key_hash) == cert_id_hashes(
        pki.leaf, pki.intermediate, hashes.SHA384()
    )
    ext = req.extensions.get_extension_for_class(x509.OCSPNonce)
    assert ext.critical and ext.value.nonce == NONCE


def test_request_without_nonce(pki: TestPki) -> None:
    req = ocsp.load_der_ocsp_request(build_ocsp_request(pki.leaf, pki.intermediate, nonce=None))
    assert len(req.extensions) == 0


@pytest.mark.parametrize("size", [0, 33])
def test_request_nonce_bounds(pki: TestPki, size: int) -> None:
    with pytest.raises(InputError):
        build_ocsp_request(pki.leaf, pki.intermediate, nonce=b"\x01" * size)


def test_request_refuses_md5(pki: TestPki) -> None:
    with pytest.raises(InputError):
        build_ocsp_request(pki.leaf, pki.intermediate, nonce=None, hash_algorithm=hashes.MD5())


@pytest.mark.parametrize("alg", [hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_cert_id_key_agrees_with_cryptography(pki: TestPki, alg: hashes.HashAlgorithm) -> None:
    for cert, issuer in ((pki.leaf, pki.intermediate), (pki.intermediate, pki.root)):
        name, name_hash, key_hash, serial = cert_id_key(cert, issuer, alg.name)
        assert (name_hash, key_hash) == cert_id_hashes(cert, issuer, alg)
        assert (name, serial) == (alg.name, cert.serial_number)


# --- the real NVIDIA chains -----------------------------------------------------------------


def _hopper() -> tuple[x509.Certificate, ...]:
    return load_pem_chain((NVIDIA / "hopper/hopperCertChain.txt").read_bytes())


def _rim_chain() -> tuple[x509.Certificate, ...]:
    """As nvtrust builds it: KeyInfo certificates except the last, then the pinned RIM root."""
    text = (NVIDIA / "rims/test_no_gpu/Driver_RIM_test_no_gpu.swidtag").read_text()
    blobs = re.findall(r"<(?:\w+:)?X509Certificate>(.*?)</(?:\w+:)?X509Certificate>", text, re.S)
    certs = [x509.load_der_x509_certificate(b64decode("".join(b.split()))) for b in blobs]
    return (*certs[:-1], roots.nvidia_rim_root())


def test_device_indices_are_the_three_middle_certs() -> None:
    chain = _hopper()
    assert nvidia_device_ocsp_indices(len(chain)) == NVIDIA_DEVICE_OCSP_INDICES == (1, 2, 3)
    names = [chain[i].subject.rfc4514_string() for i in NVIDIA_DEVICE_OCSP_INDICES]
    assert "GH100 A01 GSP BROM" in names[0]
    assert "Provisioner ICA 1" in names[1]
    assert "GH100 Identity" in names[2]


def test_rim_indices_cover_all_but_the_root() -> None:
    chain = _rim_chain()
    assert len(chain) == 4
    assert nvidia_rim_ocsp_indices(len(chain)) == (0, 1, 2)
    assert "HCC RIM L4 Signer" in chain[0].subject.rfc4514_string()


def test_index_helpers_refuse_short_chains() -> None:
    with pytest.raises(InputError):
        nvidia_device_ocsp_indices(2)
    with pytest.raises(InputError):
        nvidia_rim_ocsp_indices(1)


@pytest.mark.parametrize("index", NVIDIA_DEVICE_OCSP_INDICES)
def test_request_for_real_hopper_chain(index: int) -> None:
    chain = _hopper()
    cert, issuer = chain[index], chain[index + 1]
    req = ocsp.load_der_ocsp_request(build_ocsp_request(cert, issuer, nonce=NONCE))
    assert req.serial_number == cert.serial_number
    assert isinstance(req.hash_algorithm, hashes.SHA384)
    assert len(req.issuer_name_hash) == len(req.issuer_key_hash) == 48
    expected = cert_id_hashes(cert, issuer, hashes.SHA384())
    assert (req.issuer_name_hash, req.issuer_key_hash) == expected
    # Independent of cryptography: the key hash is SHA-384 of the issuer's P-384 point.
    point = issuer.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert req.issuer_key_hash == hashlib.sha384(point).digest()
    assert req.issuer_name_hash == hashlib.sha384(cert.issuer.public_bytes()).digest()


def test_request_for_real_rim_chain() -> None:
    chain = _rim_chain()
    for i in nvidia_rim_ocsp_indices(len(chain)):
        req = ocsp.load_der_ocsp_request(build_ocsp_request(chain[i], chain[i + 1], nonce=None))
        assert req.serial_number == chain[i].serial_number


def test_hopper_chain_response_from_wrong_ca_is_invalid(cases: dict[str, bytes]) -> None:
    """A test-PKI response offered for a real NVIDIA certificate never passes."""
    chain = _hopper()
    c = check_ocsp_response(cases["good"], cert=chain[1], issuer=chain[2], at=TODAY)
    assert (c.status, c.ok) == ("invalid", False)
    assert c.subject == "GH100 A01 GSP BROM"


def _with_single_extension(pki: TestPki, der: bytes, extension: bytes) -> bytes:
    """``der`` re-signed by the issuer with ``extension`` as its one singleExtension."""
    tbs = _children(_basic(der)[0])
    (single,) = _children(tbs[2])
    extended = b"".join(_children(single)) + _tlv(0xA1, _tlv(0x30, extension))
    tbs[2] = _tlv(0x30, _tlv(0x30, extended))
    return resign(der, pki.intermediate_key, tbs=_tlv(0x30, b"".join(tbs)))


def test_a_critical_single_extension_not_understood_is_refused(pki: TestPki) -> None:
    """As a critical response extension is: the answer may depend on what it says."""
    unknown = _tlv(
        0x30,
        _tlv(0x06, bytes.fromhex("2b0601040183b24301"))  # 1.3.6.1.4.1.55555.1
        + _tlv(0x01, b"\xff")  # critical
        + _tlv(0x04, b"\x05\x00"),
    )
    der = _with_single_extension(pki, make_response(pki), unknown)
    c = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.code) == ("invalid", "unsupported_critical_extension")


def test_next_update_before_this_update_is_malformed(pki: TestPki) -> None:
    der = make_response(pki, next_update=THIS_UPDATE - timedelta(days=1))
    c = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.code) == ("invalid", "malformed") and "before thisUpdate" in c.detail


def test_a_delegated_responder_whose_key_usage_forbids_signing_is_refused(pki: TestPki) -> None:
    """Issued by the issuer, id-kp-OCSPSigning, valid: but its keyUsage (a CA's: keyCertSign,
    no digitalSignature) does not allow it to sign responses. The included certificate lies
    outside the signed data, so it is swapped in without re-signing."""
    der = make_response(pki, signer="responder")
    no_signing = _responder_like(pki, 1000, ca=True)  # keyUsage keyCertSign and cRLSign only
    swapped = _with_responder(der, no_signing)
    assert check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=NOW).ok
    c = check_ocsp_response(swapped, cert=pki.leaf, issuer=pki.intermediate, at=NOW)
    assert (c.status, c.code) == ("invalid", "unauthorized_responder") and "keyUsage" in c.detail


def _responder_like(
    pki: TestPki, serial_offset: int, *, ca: bool = False, not_before: datetime | None = None
) -> x509.Certificate:
    """A certificate for the delegated responder's key and name, issued by the issuer with
    id-kp-OCSPSigning, differing from the PKI's responder in ``ca`` (its keyUsage follows) or
    ``not_before``."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from tests.revocation.pki import _cert

    return _cert(
        subject=pki.responder.subject,
        issuer=pki.intermediate.subject,
        public_key=pki.responder_key.public_key(),
        signing_key=pki.intermediate_key,
        serial=pki.responder.serial_number + serial_offset,
        ca=ca,
        eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        **({} if not_before is None else {"not_before": not_before}),
    )


def _with_responder(der: bytes, responder: x509.Certificate) -> bytes:
    """``der`` with its included responder certificate replaced (outside the signed data)."""
    from tests.revocation.pki import _wrap_basic

    parts = _basic(der)
    return _wrap_basic([*parts[:3], _tlv(0xA0, _tlv(0x30, responder.public_bytes(Encoding.DER)))])


def test_a_cached_verdict_is_not_served_before_its_responder_was_valid(pki: TestPki) -> None:
    """The cache's window starts no earlier than the delegated responder's notBefore: asked
    again for a time inside the response's own window but before the responder's validity, a
    fresh check refuses, so the cache must too (mutation testing: no test failed when the
    window ignored the responder)."""
    late = _responder_like(pki, 2000, not_before=THIS_UPDATE + timedelta(minutes=30))
    der = _with_responder(make_response(pki, signer="responder"), late)
    early = THIS_UPDATE + timedelta(minutes=10)
    fresh = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=early)
    assert not fresh.ok
    cache = OcspCache()
    assert check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=NOW, cache=cache).ok
    again = check_ocsp_response(der, cert=pki.leaf, issuer=pki.intermediate, at=early, cache=cache)
    assert (again.status, again.code) == (fresh.status, fresh.code)
