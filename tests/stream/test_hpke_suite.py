"""sealing.hpke_suite: RFC 9180 vectors, cross-implementation checks, strict key encodings."""

from __future__ import annotations

import pickle

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import InputError, ParseError
from sealing import hpke_suite
from sealing.hpke_suite import (
    SUITE_PARAMS,
    HpkeOpenError,
    HpkePublicKey,
    HpkeSealError,
    SuiteId,
    bound_info,
    generate_keypair,
)
from tests.stream import hpke_ref
from tests.stream.conftest import GEN, KEYS, load_json

VEC = load_json("rfc9180_a1_1_x25519_sha256_aes128gcm_base.json")
H = bytes.fromhex


def test_reference_reproduces_rfc9180_a11() -> None:
    """The test-only reference is right: it derives every value of RFC 9180 A.1.1 (same KEM
    and KDF as lessee's X25519 suite; the AEAD differs only in its id and key length)."""
    sk_r, pk_r = hpke_ref.x25519_derive_key_pair(H(VEC["ikmR"]))
    sk_e, pk_e = hpke_ref.x25519_derive_key_pair(H(VEC["ikmE"]))
    assert (sk_r.hex(), pk_r.hex()) == (VEC["skRm"], VEC["pkRm"])
    assert pk_e.hex() == VEC["pkEm"]
    shared, enc = hpke_ref.x25519_encap(sk_e, pk_r)
    assert (shared.hex(), enc.hex()) == (VEC["shared_secret"], VEC["enc"])
    assert hpke_ref.x25519_decap(enc, sk_r) == shared
    ctx = hpke_ref.key_schedule_base(
        hpke_ref.KEM_X25519, shared, H(VEC["info"]), hpke_ref.AEAD_AES_128_GCM
    )
    assert (ctx.key.hex(), ctx.base_nonce.hex()) == (VEC["key"], VEC["base_nonce"])
    assert ctx.exporter_secret.hex() == VEC["exporter_secret"]
    for e in VEC["encryptions"]:
        ct = ctx.seal(e["seq"], H(e["aad"]), H(e["plaintext"]))
        assert ct.hex() == e["ciphertext"]


def test_cryptography_opens_rfc9180_a11() -> None:
    """cryptography's single-shot HPKE (seq 0) opens A.1.1's first encryption. The public API
    has no aad, so this uses the binding's private ``_decrypt_with_aad``: tests only."""
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl

    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    sk = x25519.X25519PrivateKey.from_private_bytes(H(VEC["skRm"]))
    e0 = VEC["encryptions"][0]
    blob = H(VEC["enc"]) + H(e0["ciphertext"])
    pt = rust_openssl.hpke._decrypt_with_aad(suite, blob, sk, info=H(VEC["info"]), aad=H(e0["aad"]))
    assert pt == H(e0["plaintext"])


def test_our_open_accepts_a_fixed_ephemeral_ciphertext_from_the_reference() -> None:
    """Reference seals with the vector's fixed ephemeral key and lessee's bound info; lessee's
    ``open`` (cryptography underneath) must open it: same key schedule, same info binding."""
    sk = generate_keypair(SuiteId.X25519_SHA256_AES256GCM, rng=lambda n: H(VEC["skRm"]))
    assert sk.public_key.raw.hex() == VEC["pkRm"]
    info, aad, pt = b"lessee test", b"header", b"the data key"
    sk_e, _ = hpke_ref.x25519_derive_key_pair(H(VEC["ikmE"]))
    shared, enc = hpke_ref.x25519_encap(sk_e, H(VEC["pkRm"]))
    ctx = hpke_ref.key_schedule_base(hpke_ref.KEM_X25519, shared, bound_info(info, aad))
    blob = enc + ctx.seal(0, b"", pt)
    assert hpke_suite.open(sk, info, aad, blob) == pt
    with pytest.raises(HpkeOpenError):
        hpke_suite.open(sk, info, b"other", blob)


def test_reference_opens_our_x25519_seal() -> None:
    sk = KEYS[SuiteId.X25519_SHA256_AES256GCM]
    seed = GEN.DetRng(f"lessee stream kat key {SuiteId.X25519_SHA256_AES256GCM.name}")(32)
    blob = hpke_suite.seal(sk.public_key, b"i", b"a", b"secret")
    enc, ct = blob[:32], blob[32:]
    ctx = hpke_ref.key_schedule_base(
        hpke_ref.KEM_X25519, hpke_ref.x25519_decap(enc, seed), bound_info(b"i", b"a")
    )
    assert ctx.open(0, b"", ct) == b"secret"


def test_reference_opens_our_xwing_seal() -> None:
    """Pins the default suite: cryptography's MLKEM768_X25519 is X-Wing (kem_id 0x647a), with
    enc = ct_M || ct_X and pk = pk_M || pk_X, as SUITE_PARAMS and the docs say."""
    suite = SuiteId.MLKEM768_X25519_SHA256_AES256GCM
    seed = GEN.DetRng(f"lessee stream kat key {suite.name}")(96)
    sk = KEYS[suite]
    sk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed[:64])
    assert sk.public_key.raw[:1184] == sk_m.public_key().public_bytes_raw()
    blob = hpke_suite.seal(sk.public_key, b"info", b"aad", b"weights key")
    params = SUITE_PARAMS[suite]
    assert params.kem_id == hpke_ref.KEM_XWING
    enc, ct = blob[: params.enc_len], blob[params.enc_len :]
    shared = hpke_ref.xwing_decap(enc, sk_m, seed[64:])
    ctx = hpke_ref.key_schedule_base(params.kem_id, shared, bound_info(b"info", b"aad"))
    assert ctx.open(0, b"", ct) == b"weights key"


@pytest.mark.parametrize("suite", list(SuiteId), ids=lambda s: s.name)
def test_public_key_round_trip_and_key_id(suite: SuiteId) -> None:
    pk = KEYS[suite].public_key
    enc = pk.encode()
    assert enc[0] == suite and len(enc) == 1 + SUITE_PARAMS[suite].public_key_len
    again = HpkePublicKey.decode(enc)
    assert again == pk and again.key_id == pk.key_id
    assert generate_keypair(suite).public_key.key_id != pk.key_id


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" + bytes(32), b"\x03" + bytes(32), b"\x02" + bytes(31), b"\x02" + bytes(33)],
)
def test_public_key_decode_is_strict(data: bytes) -> None:
    with pytest.raises(ParseError):
        HpkePublicKey.decode(data)


def test_invalid_mlkem_key_is_a_parse_error() -> None:
    """0xff..ff fails FIPS 203's modulus check: refused at decode, not at first use."""
    with pytest.raises(ParseError):
        HpkePublicKey.decode(b"\x01" + b"\xff" * 1216)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1300))
def test_public_key_decode_random_bytes_only_typed_errors(data: bytes) -> None:
    try:
        pk = HpkePublicKey.decode(data)
    except ParseError:
        return
    assert pk.encode() == data


@settings(max_examples=100, deadline=None)
@given(
    suite=st.sampled_from(list(SuiteId)),
    info=st.binary(max_size=64),
    aad=st.binary(max_size=64),
    pt=st.binary(max_size=256),
    data=st.data(),
)
def test_seal_open_round_trip_and_every_flip_fails(
    suite: SuiteId, info: bytes, aad: bytes, pt: bytes, data: st.DataObject
) -> None:
    sk = KEYS[suite]
    blob = hpke_suite.seal(sk.public_key, info, aad, pt)
    assert len(blob) == SUITE_PARAMS[suite].enc_len + len(pt) + 16
    assert hpke_suite.open(sk, info, aad, blob) == pt
    i = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(blob)
    flipped[i] ^= 1 << bit
    with pytest.raises(HpkeOpenError):
        hpke_suite.open(sk, info, aad, bytes(flipped))
    with pytest.raises(HpkeOpenError):
        hpke_suite.open(sk, info, aad, blob[: data.draw(st.integers(0, len(blob) - 1))])
    with pytest.raises(HpkeOpenError):
        hpke_suite.open(sk, info, aad, blob + b"\x00")


def test_info_and_aad_boundary_is_unambiguous() -> None:
    sk = KEYS[SuiteId.X25519_SHA256_AES256GCM]
    blob = hpke_suite.seal(sk.public_key, b"ab", b"", b"x")
    with pytest.raises(HpkeOpenError):
        hpke_suite.open(sk, b"a", b"b", blob)
    other = KEYS[SuiteId.MLKEM768_X25519_SHA256_AES256GCM]
    with pytest.raises(HpkeOpenError):
        hpke_suite.open(other, b"ab", b"", blob)


def test_private_key_never_prints_or_pickles() -> None:
    sk = KEYS[SuiteId.X25519_SHA256_AES256GCM]
    seed = GEN.DetRng(f"lessee stream kat key {SuiteId.X25519_SHA256_AES256GCM.name}")(32)
    assert seed.hex() not in repr(sk) and sk.public_key.key_id.hex() in repr(sk)
    with pytest.raises(TypeError):
        pickle.dumps(sk)


def test_bounds_are_enforced() -> None:
    """A caller's info, aad or plaintext over its bound is an InputError (exit 2 in the CLI),
    not a bare ValueError; open keeps its one opaque error."""
    sk = KEYS[SuiteId.X25519_SHA256_AES256GCM]
    pk = sk.public_key
    with pytest.raises(InputError, match="info"):
        hpke_suite.seal(pk, bytes(hpke_suite.MAX_INFO_LEN + 1), b"", b"")
    with pytest.raises(InputError, match="aad"):
        hpke_suite.seal(pk, b"", bytes(hpke_suite.MAX_AAD_LEN + 1), b"")
    with pytest.raises(InputError, match="plaintext"):
        hpke_suite.seal(pk, b"", b"", bytes(hpke_suite.MAX_PLAINTEXT_LEN + 1))
    blob = hpke_suite.seal(pk, bytes(hpke_suite.MAX_INFO_LEN), bytes(hpke_suite.MAX_AAD_LEN), b"x")
    assert hpke_suite.open(sk, bytes(hpke_suite.MAX_INFO_LEN), bytes(hpke_suite.MAX_AAD_LEN), blob)
    with pytest.raises(HpkeOpenError):
        hpke_suite.open(sk, bytes(hpke_suite.MAX_INFO_LEN + 1), b"", blob)
    with pytest.raises(HpkeOpenError):
        hpke_suite.open(sk, b"", bytes(hpke_suite.MAX_AAD_LEN + 1), blob)
    with pytest.raises(ValueError, match="rng"):
        generate_keypair(SuiteId.X25519_SHA256_AES256GCM, rng=lambda n: b"short")


_P25519 = 2**255 - 19
#: The u-coordinates of the X25519 points of order 1, 2, 4 and 8 (RFC 7748 §6.1 asks to refuse
#: them; the list libsodium and others block): 0, 1, the two of order 8, and p - 1; then the
#: non-canonical encodings p and p + 1 (= 0 and 1 mod p).
_SMALL_ORDER_U = [
    0,
    1,
    int.from_bytes(H("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), "little"),
    int.from_bytes(H("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"), "little"),
    _P25519 - 1,
    _P25519,
    _P25519 + 1,
]
#: Each of them also with the unused top bit set (RFC 7748 masks it): 14 encodings in all.
_SMALL_ORDER_RAW = [u.to_bytes(32, "little") for u in _SMALL_ORDER_U] + [
    (u | 1 << 255).to_bytes(32, "little") for u in _SMALL_ORDER_U
]


def test_the_small_order_list_is_really_small_order() -> None:
    """Independent of hpke_suite: every DH with these points is all-zero (cryptography refuses
    it), so the list below tests what it claims to."""
    for raw in _SMALL_ORDER_RAW:
        with pytest.raises(ValueError):
            x25519.X25519PrivateKey.generate().exchange(
                x25519.X25519PublicKey.from_public_bytes(raw)
            )


@pytest.mark.parametrize("suite", list(SuiteId), ids=lambda s: s.name)
@pytest.mark.parametrize("raw", _SMALL_ORDER_RAW, ids=lambda r: r.hex()[:8] + r.hex()[-2:])
def test_small_order_x25519_keys_are_refused_at_decode(suite: SuiteId, raw: bytes) -> None:
    """A small-order X25519 key (alone, or as the hybrid's X25519 half) would make every seal
    fail later with a bare ValueError: refused where the bytes arrive, as a ParseError."""
    prefix = KEYS[suite].public_key.raw[:-32]  # the valid ML-KEM half for the hybrid
    with pytest.raises(ParseError, match="small order") as exc:
        HpkePublicKey.from_raw(suite, prefix + raw)
    assert exc.value.field == "public_key"
    with pytest.raises(ParseError, match="small order"):
        HpkePublicKey.decode(bytes([suite]) + prefix + raw)


@pytest.mark.parametrize("suite", list(SuiteId), ids=lambda s: s.name)
def test_non_canonical_x25519_keys_are_refused_at_decode(suite: SuiteId) -> None:
    """Bit 255 set, or a u-coordinate of p or more (not small order): the same DH key as the
    reduced form, but another byte string and so another key id, and HPKE hashes the key as
    given (a blob sealed to it opens with nothing). One key, one encoding."""
    valid = KEYS[suite].public_key.raw
    prefix, x = valid[:-32], int.from_bytes(valid[-32:], "little")
    p = 2**255 - 19
    for u in (x | 1 << 255, p + 2, 2**255 - 1):
        with pytest.raises(ParseError, match="not canonical") as exc:
            HpkePublicKey.from_raw(suite, prefix + u.to_bytes(32, "little"))
        assert exc.value.field == "public_key"
    assert HpkePublicKey.from_raw(suite, valid).raw == valid  # the canonical form still decodes


@pytest.mark.parametrize("suite", list(SuiteId), ids=lambda s: s.name)
def test_seal_turns_a_kem_refusal_into_a_typed_error(suite: SuiteId) -> None:
    """A key built around ``from_raw`` (as no caller should) still fails typed, not ValueError."""
    valid = KEYS[suite].public_key
    zero = x25519.X25519PublicKey.from_public_bytes(bytes(32))
    key = (
        zero
        if suite is SuiteId.X25519_SHA256_AES256GCM
        else hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(valid.raw[:-32]), zero
        )
    )
    bad = HpkePublicKey(suite, valid.raw[:-32] + bytes(32), key)
    with pytest.raises(HpkeSealError) as exc:
        hpke_suite.seal(bad, b"info", b"", b"key")
    assert isinstance(exc.value, InputError)
    assert hpke_suite.seal(valid, b"info", b"", b"key")  # a good key still seals
