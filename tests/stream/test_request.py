"""sealing.stream.request: the sealed request, its padding, and the enclave's strict opening."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import InputError, LesseeError, ParseError, VerificationError
from sealing import hpke_suite
from sealing.hpke_suite import SUITE_PARAMS, SuiteId
from sealing.stream import GenerationParams, StreamError
from sealing.stream.request import (
    HEADER_LEN,
    MAX_REQUEST_PLAINTEXT,
    REQUEST_SECRET_LEN,
    open_request,
    request_header,
    request_info,
    seal_request,
)
from tests.stream.conftest import GEN, KEYS, load_json

X = SuiteId.X25519_SHA256_AES256GCM


def test_committed_requests_open_to_the_expected_fields() -> None:
    """Decrypt-side KAT: requests sealed once to the fixed keys, for both suites."""
    entries = load_json("requests.json")
    assert {e["suite"] for e in entries} == {int(s) for s in SuiteId}
    for e in entries:
        req = open_request(KEYS[SuiteId(e["suite"])], bytes.fromhex(e["request"]))
        assert req.prompt == e["prompt"]
        assert req.params == GenerationParams(**e["params"])
        assert req.record_size == e["record_size"]
        assert req.request_secret.hex() == e["request_secret"]
        assert req.enc.hex() == e["enc"] and req.key_id.hex() == e["key_id"]
        wire = bytes.fromhex(e["request"])
        assert wire[:HEADER_LEN] == request_header(SuiteId(e["suite"]), req.key_id)


def test_generator_keeps_valid_committed_requests() -> None:
    committed = load_json("requests.json")
    assert GEN.build_requests(committed) == committed


def test_round_trip_and_secret_stays_out_of_repr(suite: SuiteId) -> None:
    params = GenerationParams(max_new_tokens=7, temperature_milli=0, top_p_milli=500)
    sealed = seal_request(KEYS[suite].public_key, "héllo", params=params, record_size=64)
    req = open_request(KEYS[suite], sealed.wire)
    assert (req.prompt, req.params, req.record_size) == ("héllo", params, 64)
    assert req.request_secret == sealed.request_secret and req.enc == sealed.enc
    assert sealed.request_secret.hex() not in repr(req) + repr(sealed)
    assert "héllo" not in repr(req)


def test_padding_hides_prompt_length_within_a_block() -> None:
    pk = KEYS[X].public_key
    sizes = {len(seal_request(pk, "x" * n, pad_block=512).wire) for n in range(0, 400, 37)}
    assert len(sizes) == 1
    unpadded = {len(seal_request(pk, "x" * n, pad_block=1).wire) for n in (1, 2, 3)}
    assert len(unpadded) == 3
    wire = seal_request(pk, "x" * 500, pad_block=512).wire
    overhead = HEADER_LEN + SUITE_PARAMS[X].enc_len + 16
    assert len(wire) - overhead == 1024


def _forge(plaintext: bytes, suite: SuiteId = X) -> bytes:
    """A request with a hand-made plaintext: anyone with the public key can send one."""
    pk = KEYS[suite].public_key
    header = request_header(suite, pk.key_id)
    return header + hpke_suite.seal(pk, request_info(header), b"", plaintext)


def _plain(
    record_size: int = 32, max_new: int = 8, temp: int = 0, top_p: int = 1000, prompt: bytes = b"hi"
) -> bytes:
    return (
        bytes(REQUEST_SECRET_LEN)
        + struct.pack(">HIHHI", record_size, max_new, temp, top_p, len(prompt))
        + prompt
    )


@pytest.mark.parametrize(
    ("plaintext", "field"),
    [
        (_plain() + b"\x00\x01", "padding"),
        (_plain(prompt=b"\xff\xfe"), "prompt"),
        (_plain(record_size=15), "record_size"),
        (_plain(record_size=16385), "record_size"),
        (_plain(max_new=0), "params"),
        (_plain(top_p=1001), "params"),
        (_plain(temp=10001), "params"),
        (_plain()[:-2], "prompt_len"),
    ],
)
def test_malformed_plaintext_is_a_parse_error(plaintext: bytes, field: str) -> None:
    with pytest.raises(ParseError) as info:
        open_request(KEYS[X], _forge(plaintext))
    assert info.value.field == field


def test_header_checks() -> None:
    wire = seal_request(KEYS[X].public_key, "hi").wire
    with pytest.raises(ParseError, match="version"):
        open_request(KEYS[X], b"\x02" + wire[1:])
    with pytest.raises(ParseError):
        open_request(KEYS[X], wire[:1] + b"\x07" + wire[2:])
    with pytest.raises(ParseError):
        open_request(KEYS[X], wire[:60])
    with pytest.raises(VerificationError) as info:
        open_request(KEYS[SuiteId.MLKEM768_X25519_SHA256_AES256GCM], wire)
    assert info.value.reason == "unknown_key"
    other = wire[:2] + bytes(32) + wire[HEADER_LEN:]
    with pytest.raises(VerificationError):
        open_request(KEYS[X], other)


def test_header_is_bound_into_the_hpke_info() -> None:
    """Re-labelling a request for another key of the same enclave fails even if the receiver
    ignored the key id check: the header is part of the HPKE info."""
    wire = seal_request(KEYS[X].public_key, "hi").wire
    header = request_header(X, KEYS[X].public_key.key_id)
    with pytest.raises(hpke_suite.HpkeOpenError):
        hpke_suite.open(KEYS[X], request_info(header[:-1] + b"\x00"), b"", wire[HEADER_LEN:])


def test_seal_bounds() -> None:
    pk = KEYS[X].public_key
    with pytest.raises(InputError):
        seal_request(pk, "x", record_size=8)
    with pytest.raises(InputError):
        seal_request(pk, "x" * MAX_REQUEST_PLAINTEXT)
    with pytest.raises(InputError):
        seal_request(pk, "x", pad_block=0)
    with pytest.raises(InputError):
        GenerationParams(max_new_tokens=0)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_flip_or_truncation_is_a_typed_error(data: st.DataObject) -> None:
    suite = data.draw(st.sampled_from(list(SuiteId)))
    wire = seal_request(KEYS[suite].public_key, data.draw(st.text(max_size=40))).wire
    i = data.draw(st.integers(0, len(wire) - 1))
    flipped = bytearray(wire)
    flipped[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(LesseeError) as info:
        open_request(KEYS[suite], bytes(flipped))
    if i >= HEADER_LEN:  # ciphertext or enc: the one opaque error
        assert isinstance(info.value, StreamError)
    with pytest.raises(LesseeError):
        open_request(KEYS[suite], wire[: data.draw(st.integers(0, len(wire) - 1))])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=700))
def test_random_bytes_only_typed_errors(data: bytes) -> None:
    with pytest.raises(LesseeError):
        open_request(KEYS[X], data)
