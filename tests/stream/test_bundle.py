"""sealing.stream.bundle: strict decoding and the "result attests this exact key" hook."""

from __future__ import annotations

import json
import struct
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import InputError, ParseError, VerificationError
from sealing.hpke_suite import SuiteId, generate_keypair
from sealing.stream import ClientStream, KeyBundle, VerifiedKeyBundle, verify_bundle
from sealing.stream.bundle import (
    MAX_ATTESTATION_RESULT_LEN,
    MAX_EVIDENCE_LEN,
    MAX_LOG_PROOF_LEN,
    MAX_NONCE_LEN,
    MIN_NONCE_LEN,
)
from tests.stream.conftest import KEYS, NOW, accept_all


def _bundle(suite: SuiteId = SuiteId.X25519_SHA256_AES256GCM) -> KeyBundle:
    pk = KEYS[suite].public_key
    result = json.dumps({"enclave_key_id": pk.key_id.hex()}).encode()
    return KeyBundle.build(pk, result, b"inclusion proof")


@pytest.mark.parametrize("suite", list(SuiteId), ids=lambda s: s.name)
def test_round_trip_keeps_raw_bytes(suite: SuiteId) -> None:
    b = _bundle(suite)
    again = KeyBundle.decode(b.raw)
    assert again == b and again.raw == b.raw
    assert again.public_key.encode() == KEYS[suite].public_key.encode()
    assert b.raw[:4] == b"LSKB" and b.raw[4] == 1 and b.raw[5] == suite


def test_layout_is_byte_exact() -> None:
    b = _bundle()
    pk = b.public_key
    expected = (
        b"LSKB\x01\x02"
        + pk.key_id
        + struct.pack(">H", 32)
        + pk.raw
        + struct.pack(">I", len(b.attestation_result))
        + b.attestation_result
        + struct.pack(">I", 15)
        + b"inclusion proof"
    )
    assert b.raw == expected


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: b"XSKB" + r[4:], "magic"),
        (lambda r: r[:4] + b"\x03" + r[5:], "version"),
        (lambda r: r[:4] + b"\x02" + r[5:], "nonce_len"),  # version 2 without its evidence
        (lambda r: r[:5] + b"\x09" + r[6:], "suite"),
        (lambda r: r[:5] + b"\x01" + r[6:], "pk_len"),  # X25519 key under the hybrid suite id
        (lambda r: r[:6] + bytes(32) + r[38:], "key_id"),
        (lambda r: r + b"\x00", "bundle"),
        (lambda r: r[:10], "header"),
    ],
)
def test_strict_decoding_names_the_field(mutate: object, field: str) -> None:
    raw = _bundle().raw
    with pytest.raises(ParseError) as info:
        KeyBundle.decode(mutate(raw))  # type: ignore[operator]
    assert info.value.field == field


def test_bounds_on_opaque_fields() -> None:
    pk = KEYS[SuiteId.X25519_SHA256_AES256GCM].public_key
    with pytest.raises(ParseError):
        KeyBundle.build(pk, b"", b"")
    with pytest.raises(ParseError):
        KeyBundle.build(pk, bytes(MAX_ATTESTATION_RESULT_LEN + 1), b"")
    with pytest.raises(ParseError):
        KeyBundle.build(pk, b"r", bytes(MAX_LOG_PROOF_LEN + 1))
    assert KeyBundle.build(pk, bytes(MAX_ATTESTATION_RESULT_LEN), bytes(MAX_LOG_PROOF_LEN))


EVIDENCE = b'{"version":1,"gpus":[]}'
NONCE = bytes(range(32))


def _bundle_v2(suite: SuiteId = SuiteId.X25519_SHA256_AES256GCM) -> KeyBundle:
    pk = KEYS[suite].public_key
    return KeyBundle.build(pk, b"result", b"proof", evidence=EVIDENCE, nonce=NONCE)


def test_version_2_carries_the_evidence_and_nonce_byte_exactly() -> None:
    b = _bundle_v2()
    v1 = KeyBundle.build(b.public_key, b"result", b"proof")
    assert b.raw == (
        b"LSKB\x02" + v1.raw[5:] + bytes([32]) + NONCE + struct.pack(">I", len(EVIDENCE)) + EVIDENCE
    )
    again = KeyBundle.decode(b.raw)
    assert again == b and (again.evidence, again.nonce) == (EVIDENCE, NONCE)
    assert (v1.evidence, v1.nonce) == (b"", b"") and v1.raw[4] == 1  # no evidence: still v1


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda r: (
                r[: -len(EVIDENCE) - 4 - 32 - 1]
                + bytes([MIN_NONCE_LEN - 1])
                + r[-len(EVIDENCE) - 4 - 32 :]
            ),
            "nonce_len",
        ),
        (
            lambda r: (
                r[: -len(EVIDENCE) - 4 - 32 - 1]
                + bytes([MAX_NONCE_LEN + 1])
                + r[-len(EVIDENCE) - 4 - 32 :]
            ),
            "nonce_len",
        ),
        (lambda r: r[: -len(EVIDENCE) - 4] + struct.pack(">I", 0), "evidence_len"),
        (
            lambda r: r[: -len(EVIDENCE) - 4] + struct.pack(">I", MAX_EVIDENCE_LEN + 1) + EVIDENCE,
            "evidence_len",
        ),
        (lambda r: r[:-1], "evidence"),
        (lambda r: r + b"\x00", "bundle"),
    ],
)
def test_version_2_fields_are_strict(mutate: object, field: str) -> None:
    with pytest.raises(ParseError) as info:
        KeyBundle.decode(mutate(_bundle_v2().raw))  # type: ignore[operator]
    assert info.value.field == field


def test_evidence_and_nonce_come_together_and_bounded() -> None:
    pk = KEYS[SuiteId.X25519_SHA256_AES256GCM].public_key
    for kwargs in (
        {"evidence": EVIDENCE},
        {"nonce": NONCE},
        {"evidence": EVIDENCE, "nonce": bytes(MIN_NONCE_LEN - 1)},
        {"evidence": EVIDENCE, "nonce": bytes(MAX_NONCE_LEN + 1)},
        {"evidence": bytes(MAX_EVIDENCE_LEN + 1), "nonce": NONCE},
    ):
        with pytest.raises(ParseError):
            KeyBundle.build(pk, b"r", b"", **kwargs)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_flips_and_truncations_give_typed_errors_or_a_different_bundle(data: st.DataObject) -> None:
    make = data.draw(st.sampled_from([_bundle, _bundle_v2]))  # version 1, version 2
    raw = make(data.draw(st.sampled_from(list(SuiteId)))).raw
    i = data.draw(st.integers(0, len(raw) - 1))
    flipped = bytearray(raw)
    flipped[i] ^= data.draw(st.integers(1, 255))
    try:
        b = KeyBundle.decode(bytes(flipped))
    except ParseError:
        pass
    else:  # only opaque bytes (result, proof; nonce, evidence) may change without an error
        assert b.raw != raw and b.public_key.raw == KeyBundle.decode(raw).public_key.raw
    with pytest.raises(ParseError):
        KeyBundle.decode(raw[: data.draw(st.integers(0, len(raw) - 1))])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_only_parse_errors(data: bytes) -> None:
    with pytest.raises(ParseError):
        KeyBundle.decode(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_random_tail_after_valid_header_only_parse_errors(tail: bytes) -> None:
    raw = _bundle().raw
    try:
        KeyBundle.decode(raw[:70] + tail)
    except ParseError:
        return
    pytest.fail("a spliced bundle decoded")  # pragma: no cover


def test_verify_runs_the_hook_with_the_time() -> None:
    seen: list[datetime] = []

    def hook(b: KeyBundle, at: datetime) -> None:
        seen.append(at)
        accept_all(b, at)

    v = verify_bundle(_bundle(), check=hook, at=NOW)
    assert seen == [NOW] and v.verified_at == NOW and v.bundle == _bundle()


def test_substituted_key_is_rejected_by_the_hook() -> None:
    """The relay swaps in its own key but keeps the enclave's attestation result: the result
    names another key id, so the hook refuses and no stream can start."""
    honest = _bundle()
    attacker = generate_keypair(SuiteId.X25519_SHA256_AES256GCM).public_key
    forged = KeyBundle.build(attacker, honest.attestation_result, honest.log_proof)
    with pytest.raises(VerificationError) as info:
        verify_bundle(forged, check=accept_all, at=NOW)
    assert info.value.reason == "key_not_attested"


def test_a_predicate_returning_false_is_a_rejection_not_a_pass() -> None:
    with pytest.raises(VerificationError):
        verify_bundle(_bundle(), check=lambda b, at: False, at=NOW)  # type: ignore[arg-type]


def test_naive_time_is_refused() -> None:
    with pytest.raises(InputError):
        verify_bundle(_bundle(), check=accept_all, at=datetime(2026, 1, 1))


def test_only_verify_bundle_makes_a_verified_bundle() -> None:
    with pytest.raises(TypeError):
        VerifiedKeyBundle(_bundle(), NOW)
    with pytest.raises(TypeError):
        ClientStream.start(_bundle(), "hi", sent_at=0)  # type: ignore[arg-type]
