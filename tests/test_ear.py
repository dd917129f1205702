"""EAR results: real Veraison tokens verify with their published key; our own round-trip and
every tampering / algorithm-confusion attempt fails."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.ear import (
    LESSEE_PROFILE,
    AttestationResult,
    EarError,
    Status,
    Submodule,
    _unb64u,
    issue_ear,
    public_key_from_jwk,
    tier_of,
    verify_ear,
)
from attest.errors import ParseError
from tests.conftest import AUDIT

VECTORS = json.loads((AUDIT / "ear/veraison_ear_jwts.json").read_text())
NOW = datetime(2026, 11, 28, tzinfo=UTC)


def _b64u(d: bytes) -> str:
    return base64.urlsafe_b64encode(d).rstrip(b"=").decode()


@pytest.mark.parametrize("name", ["testJWT", "testJWT_JWK"])
def test_veraison_tokens_verify_with_published_key(name: str) -> None:
    key = public_key_from_jwk(VECTORS["testPKey_jwk"])
    res = verify_ear(VECTORS[name], key, at=NOW, require_lessee_profile=False)
    assert res.submods["test"].status is Status.AFFIRMING
    assert res.submods["test"].trust_vector["executables"] == 3
    assert res.verifier_build == "rrtrap-v1.0.0"


def test_trustee_token_only_verifies_with_its_own_key() -> None:
    token = VECTORS["testRealmJWT"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    # The embedded key is never trusted on its own: the Veraison key must not verify it...
    with pytest.raises(EarError):
        verify_ear(
            token,
            public_key_from_jwk(VECTORS["testPKey_jwk"]),
            at=NOW,
            require_lessee_profile=False,
        )
    # ...and it verifies only once the caller has pinned that key deliberately.
    res = verify_ear(
        token,
        public_key_from_jwk(header["jwk"]),
        at=datetime.fromtimestamp(1752059139 + 10, tz=UTC),
        require_lessee_profile=False,
    )
    assert res.submods["cpu0"].status is Status.AFFIRMING


def _result(**kw: object) -> AttestationResult:
    base: dict[str, object] = dict(
        submods={
            "cpu0": Submodule(Status.AFFIRMING, {"hardware": 2, "executables": 2}, "sha256:ab"),
            "gpu0": Submodule(
                Status.WARNING, {"hardware": 32}, extra={"x-nvidia-gpu-arch-check": True}
            ),
        },
        issued_at=int(NOW.timestamp()),
        expires_at=int(NOW.timestamp()) + 300,
        verifier_build="lessee 0.1.0",
        nonce=b"\x01" * 32,
        enclave_key=b"\x02" * 40,
        policy_digest="sha256:" + "00" * 32,
        result_id="r-1",
    )
    base.update(kw)
    return AttestationResult(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "key", [ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()]
)
def test_round_trip(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
    token = issue_ear(_result(), key)
    res = verify_ear(
        token,
        key.public_key(),
        at=NOW,
        expected_nonce=b"\x01" * 32,
        expected_enclave_key=b"\x02" * 40,
    )
    assert res.status is Status.WARNING
    assert res.submods["gpu0"].extra["x-nvidia-gpu-arch-check"] is True
    assert res.profile == LESSEE_PROFILE


def test_es256_tokens_are_issued_with_low_s() -> None:
    """(r, n - s) verifies as well as (r, s): issuing only the low S gives each token one
    spelling from its issuer (readers still accept both, for tokens issued before)."""
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    key = ec.generate_private_key(ec.SECP256R1())
    for _ in range(64):  # a random S is high half of the time: 64 draws all low by chance: 2^-64
        sig = issue_ear(_result(), key).split(".")[2]
        s = int.from_bytes(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))[32:], "big")
        assert 0 < s <= order // 2


def test_an_es256_signature_of_another_length_is_refused() -> None:
    """r || 0x00 || s reads as the same (r, s) if lengths are not checked: a second spelling of
    a genuine signature (and of the token, which the log holds byte for byte)."""
    key = ec.generate_private_key(ec.SECP256R1())
    head, payload, sig = issue_ear(_result(), key).split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    for longer in (raw[:32] + b"\x00" + raw[32:], b"\x00" + raw):
        token = f"{head}.{payload}." + base64.urlsafe_b64encode(longer).rstrip(b"=").decode()
        with pytest.raises(EarError) as err:
            verify_ear(token, key.public_key(), at=NOW)
        assert err.value.reason == "ear_signature"


def test_the_lessee_profile_and_its_expiry_are_required() -> None:
    """A token of another EAT profile is refused unless the caller asks otherwise, and a
    lessee-profile token must carry ``exp`` (a result that never expires would release keys
    forever)."""
    key = ed25519.Ed25519PrivateKey.generate()
    other = issue_ear(_result(profile="tag:example.com,2025:other"), key)
    with pytest.raises(EarError) as err:
        verify_ear(other, key.public_key(), at=NOW)
    assert err.value.reason == "ear_profile"
    assert verify_ear(other, key.public_key(), at=NOW, require_lessee_profile=False)
    with pytest.raises(ParseError, match="lacks 'exp'"):
        verify_ear(issue_ear(_result(expires_at=None), key), key.public_key(), at=NOW)


def test_expired_wrong_nonce_wrong_key_and_other_signer() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = issue_ear(_result(), key)
    with pytest.raises(EarError, match="expired"):
        verify_ear(token, key.public_key(), at=datetime(2026, 11, 29, tzinfo=UTC))
    with pytest.raises(EarError) as e:
        verify_ear(token, key.public_key(), at=NOW, expected_nonce=b"\x09" * 32)
    assert e.value.reason == "ear_nonce"
    with pytest.raises(EarError) as e:
        verify_ear(token, key.public_key(), at=NOW, expected_enclave_key=b"\x03" * 40)
    assert e.value.reason == "ear_key"
    with pytest.raises(EarError):
        verify_ear(token, ec.generate_private_key(ec.SECP256R1()).public_key(), at=NOW)
    with pytest.raises(EarError):  # EdDSA key pinned, ES256 token: algorithm confusion refused
        verify_ear(token, ed25519.Ed25519PrivateKey.generate().public_key(), at=NOW)


def test_allow_expired_returns_signed_claims_and_nothing_else() -> None:
    """``allow_expired`` lifts the expiry check only: the claims of an expired token signed
    by the pinned key come back; another signer, a tampered payload, a future ``iat``, a
    wrong nonce or key are refused exactly as without it."""
    key = ec.generate_private_key(ec.SECP256R1())
    token = issue_ear(_result(), key)
    late = datetime(2026, 11, 29, tzinfo=UTC)
    claims = verify_ear(token, key.public_key(), at=late, allow_expired=True)
    assert claims.result_id == verify_ear(token, key.public_key(), at=NOW).result_id
    assert claims.expires_at is not None and claims.expires_at < late.timestamp()
    with pytest.raises(EarError) as e:
        verify_ear(token, key.public_key(), at=late)  # the default is unchanged
    assert e.value.reason == "ear_expired"
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(EarError) as e:
        verify_ear(token, other, at=late, allow_expired=True)
    assert e.value.reason == "ear_signature"
    h, p, s = token.split(".")
    tampered = h + "." + p[:-2] + ("A" if p[-2] != "A" else "B") + p[-1] + "." + s
    with pytest.raises((EarError, ParseError)):
        verify_ear(tampered, key.public_key(), at=late, allow_expired=True)
    with pytest.raises(EarError) as e:
        verify_ear(token, key.public_key(), at=datetime(2020, 1, 1, tzinfo=UTC), allow_expired=True)
    assert e.value.reason == "ear_not_yet_valid"
    with pytest.raises(EarError) as e:
        verify_ear(
            token, key.public_key(), at=late, allow_expired=True, expected_nonce=b"\x09" * 32
        )
    assert e.value.reason == "ear_nonce"


def test_none_and_hmac_refused_and_payload_tamper() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = issue_ear(_result(), key)
    h, p, s = token.split(".")
    for alg in ("none", "HS256"):
        forged = _b64u(json.dumps({"alg": alg}).encode()) + "." + p + "." + s
        with pytest.raises(EarError) as e:
            verify_ear(forged, key.public_key(), at=NOW)
        assert e.value.reason == "ear_algorithm"
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    claims["submods"]["gpu0"]["ear.status"] = "affirming"
    with pytest.raises(EarError):
        verify_ear(h + "." + _b64u(json.dumps(claims).encode()) + "." + s, key.public_key(), at=NOW)


def test_malformed_tokens() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    for bad in ["", "a.b", "a.b.c.d", "!!.??.$$", "x" * 300_000]:
        with pytest.raises((ParseError, EarError)):
            verify_ear(bad, key, at=NOW)


@pytest.mark.parametrize("pad", [" ", "\n", "\t", "\r\n", "\x0b", "\x0c"])
def test_a_genuine_token_with_whitespace_around_it_is_refused(pad: str) -> None:
    """One token, one spelling: the broker verifies and logs the exact text it was sent, so a
    padded copy must fail here, not after it spent the result (it once verified: stripped)."""
    key = ec.generate_private_key(ec.SECP256R1())
    token = issue_ear(_result(), key)
    assert verify_ear(token, key.public_key(), at=NOW)
    for bad in (token + pad, pad + token, token.replace(".", pad + ".", 1)):
        with pytest.raises(ParseError, match="compact JWS"):
            verify_ear(bad, key.public_key(), at=NOW)


def test_lessee_profile_requires_binding_claims() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    token = issue_ear(_result(nonce=None), key)
    with pytest.raises(ParseError):
        verify_ear(token, key.public_key(), at=NOW)


def test_tiers() -> None:
    assert tier_of(2) is Status.AFFIRMING and tier_of(32) is Status.WARNING
    assert tier_of(96) is Status.CONTRAINDICATED and tier_of(0) is Status.NONE
    assert Status.worst([Status.AFFIRMING, Status.CONTRAINDICATED]) is Status.CONTRAINDICATED


# ---- issue #5: the faster parsing keeps every rule -----------------------------------------


def _reference_unb64u(text: str) -> bytes:
    """The decoder as it was before issue #5: decode leniently, then require that re-encoding
    gives the text back (the definition of canonical unpadded base64url)."""
    if any(c in text for c in "=+/ \n"):
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64u(data) != text:
        raise ValueError("not canonical")
    return data


_B64U_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=_B64U_CHARS, max_size=12),
        st.text(alphabet=_B64U_CHARS + "=+/ \n\t*.%\x00\u00e9", max_size=12),
        st.binary(max_size=9).map(_b64u),
    )
)
def test_base64url_decoder_accepts_exactly_the_canonical_texts(text: str) -> None:
    try:
        expected: bytes | None = _reference_unb64u(text)
    except ValueError:  # binascii.Error is one
        expected = None
    if expected is None:
        with pytest.raises(ParseError):
            _unb64u(text, "field")
    else:
        assert _unb64u(text, "field") == expected


def test_base64url_spare_bits_padding_and_foreign_alphabet_refused() -> None:
    assert _unb64u("QQ", "f") == b"A"
    assert _unb64u("QUI", "f") == b"AB"
    for bad in ("QR", "QUJ", "QQ==", "Q", "Q+", "Q/", "Q Q", "QQ\n", "Q*Q", "Q\u00e9"):
        with pytest.raises(ParseError):
            _unb64u(bad, "f")


def _signed(header: str, payload: str, key: ec.EllipticCurvePrivateKey) -> str:
    """A token over raw header/payload JSON texts (duplicates and all), properly ES256-signed."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    signing_input = _b64u(header.encode()) + "." + _b64u(payload.encode())
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + _b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def test_duplicate_keys_refused_at_every_depth() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    claims = _result().to_claims()
    good = json.dumps(claims)
    assert verify_ear(_signed('{"alg":"ES256"}', good, key), key.public_key(), at=NOW)
    top = good[:-1] + ', "iat": 1}'
    nested = good.replace('"ear.status": "warning"', '"ear.status": "warning", "ear.status": "x"')
    assert nested != good
    cases = [
        ('{"alg":"ES256","alg":"ES256"}', good, "header"),
        ('{"alg":"ES256"}', top, "payload"),
        ('{"alg":"ES256"}', nested, "payload"),
    ]
    for header, payload, where in cases:
        with pytest.raises(ParseError, match=f"duplicate key .* in {where}"):
            verify_ear(_signed(header, payload, key), key.public_key(), at=NOW)


def test_issued_header_is_the_canonical_json_of_alg_typ_kid() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for kid in (None, "k1", "k2", None):
        header = issue_ear(_result(), key, kid=kid).split(".")[0]
        expected = {"alg": "ES256", "typ": "JWT"} | ({} if kid is None else {"kid": kid})
        canonical = json.dumps(expected, separators=(",", ":"), sort_keys=True)
        assert header == _b64u(canonical.encode())
    ed = ed25519.Ed25519PrivateKey.generate()
    header = issue_ear(_result(), ed).split(".")[0]
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "EdDSA", "typ": "JWT"}


def test_header_cache_keeps_every_header_check() -> None:
    """The protected header is parsed once per distinct text (``_cached_header_fields``); a
    bad header is refused on every token, also after a good one was cached, and a header too
    long to cache gets the same checks."""
    from attest.ear import _MAX_CACHED_HEADER_CHARS

    key = ec.generate_private_key(ec.SECP256R1())
    good = json.dumps(_result().to_claims())
    for _ in range(2):  # second round: every header text is now in the cache
        assert verify_ear(_signed('{"alg":"ES256"}', good, key), key.public_key(), at=NOW)
        for header, err, match in (
            ('{"alg":"HS256"}', EarError, "not allowed"),
            ('{"alg":"ES256","crit":["x"]}', EarError, "critical"),
            ('{"alg":"ES256","alg":"ES256"}', ParseError, "duplicate key"),
            ("[]", ParseError, "not a JSON object"),
        ):
            with pytest.raises(err, match=match):
                verify_ear(_signed(header, good, key), key.public_key(), at=NOW)
    long_kid = "k" * _MAX_CACHED_HEADER_CHARS
    for header, ok in (
        (f'{{"alg":"ES256","kid":"{long_kid}"}}', True),
        (f'{{"alg":"ES256","kid":"{long_kid}","crit":[]}}', False),
    ):
        token = _signed(header, good, key)
        assert len(token.split(".")[0]) > _MAX_CACHED_HEADER_CHARS
        if ok:
            assert verify_ear(token, key.public_key(), at=NOW)
        else:
            with pytest.raises(EarError, match="critical"):
                verify_ear(token, key.public_key(), at=NOW)


# ---- review: hostile JSON in an unauthenticated header, and strict JWK members --------------


@pytest.mark.parametrize(
    ("header", "match"),
    [
        pytest.param(
            b'{"alg":' + b"1" * 5000 + b"}", "integer string conversion", id="5000-digits"
        ),
        pytest.param(b"[" * 60_000 + b"]" * 60_000, "nested deeper than 64", id="60000-deep"),
    ],
)
def test_hostile_header_json_is_a_parse_error(header: bytes, match: str) -> None:
    """The header is parsed before the signature is checked, so anyone reaching ReleaseKey
    chooses it: an integer past Python's digit limit (``ValueError``) or nesting past the
    recursion limit (``RecursionError``) must be a ``ParseError`` (a client error), not an
    untyped exception the broker can only answer with INTERNAL."""
    from attest.ear import MAX_TOKEN_BYTES

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    token = _b64u(header) + ".e30." + _b64u(bytes(64))
    assert len(token) <= MAX_TOKEN_BYTES  # reaches the parser, not the size check
    with pytest.raises(ParseError, match=match) as e:
        verify_ear(token, key, at=NOW)
    assert e.value.field == "header"
    assert "set_int_max_str_digits" not in str(e.value)  # no advice meant for us, not the caller


def test_deep_payload_signed_by_the_pinned_key_is_a_parse_error() -> None:
    """The payload is read only after the pinned key's signature verified, and is not
    depth-scanned (results with many devices' findings are large, and the scan cost more than
    the parse); a foreign issuer's payload nested past Python's recursion limit is still a
    ParseError, never a RecursionError."""
    key = ec.generate_private_key(ec.SECP256R1())
    deep = '{"a":' + "[" * 60_000 + "]" * 60_000 + "}"
    token = _signed('{"alg":"ES256"}', deep, key)
    with pytest.raises(ParseError, match="payload is not acceptable JSON") as e:
        verify_ear(token, key.public_key(), at=NOW)
    assert e.value.field == "payload"


def _p256_xy() -> tuple[bytes, bytes]:
    nums = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    return nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big")


def test_jwk_members_must_be_full_length_strings() -> None:
    """RFC 7518 section 6.2.1.2 / RFC 8037 section 2: ``x``/``y`` are the full 32 bytes. A
    short or missing OKP ``x`` used to escape as a bare ``ValueError``; an EC coordinate with an
    extra leading zero (a second spelling of the same key) used to be accepted."""
    from attest.errors import InputError

    x, y = _p256_xy()
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert isinstance(
        public_key_from_jwk({"kty": "EC", "crv": "P-256", "x": _b64u(x), "y": _b64u(y)}),
        ec.EllipticCurvePublicKey,
    )
    assert isinstance(
        public_key_from_jwk({"kty": "OKP", "crv": "Ed25519", "x": _b64u(ed)}),
        ed25519.Ed25519PublicKey,
    )
    cases: list[tuple[dict[str, object], str]] = [
        ({"kty": "OKP", "crv": "Ed25519", "x": _b64u(b"\1" * 31)}, "'x' decodes to 31 bytes"),
        ({"kty": "OKP", "crv": "Ed25519", "x": _b64u(ed + b"\0")}, "'x' decodes to 33 bytes"),
        ({"kty": "OKP", "crv": "Ed25519"}, "'x' is missing or not a string"),
        ({"kty": "OKP", "crv": "Ed25519", "x": 5}, "'x' is missing or not a string"),
        ({"kty": "EC", "crv": "P-256", "x": _b64u(b"\0" + x), "y": _b64u(y)}, "'x' decodes to 33"),
        ({"kty": "EC", "crv": "P-256", "x": _b64u(x), "y": _b64u(y[1:])}, "'y' decodes to 31"),
        ({"kty": "EC", "crv": "P-256", "x": _b64u(x)}, "'y' is missing or not a string"),
        ({"kty": "EC", "crv": "P-256", "x": None, "y": _b64u(y)}, "'x' is missing or not a str"),
        ({"kty": "EC", "crv": "P-256", "x": _b64u(x), "y": _b64u(x)}, "not on P-256"),
    ]
    for jwk, match in cases:
        with pytest.raises(InputError, match=match):
            public_key_from_jwk(jwk)
