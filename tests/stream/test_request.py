"""sealing.stream.request: the sealed request, its padding, and the enclave's strict opening."""

from __future__ import annotations

import hashlib
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
    MAX_SENT_AT,
    PLAINTEXT_FIXED_LEN,
    REQUEST_SECRET_LEN,
    VERSION,
    open_request,
    request_header,
    request_id,
    request_info,
    seal_request,
)
from tests.stream.conftest import GEN, KEYS, SENT_AT, load_json, start, verified

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
        assert req.sent_at == e["sent_at"]
        assert req.enc.hex() == e["enc"] and req.key_id.hex() == e["key_id"]
        wire = bytes.fromhex(e["request"])
        assert wire[0] == VERSION == 2
        assert wire[:HEADER_LEN] == request_header(SuiteId(e["suite"]), req.key_id)


def test_generator_keeps_valid_committed_requests() -> None:
    committed = load_json("requests.json")
    assert GEN.build_requests(committed) == committed


def test_round_trip_and_secret_stays_out_of_repr(suite: SuiteId) -> None:
    params = GenerationParams(max_new_tokens=7, temperature_milli=0, top_p_milli=500)
    sealed = seal_request(
        KEYS[suite].public_key, "héllo", sent_at=SENT_AT, params=params, record_size=64
    )
    req = open_request(KEYS[suite], sealed.wire)
    assert (req.prompt, req.params, req.record_size) == ("héllo", params, 64)
    assert req.sent_at == sealed.sent_at == SENT_AT
    assert req.request_id == request_id(sealed.enc) == hashlib.sha256(sealed.enc).digest()
    assert req.request_secret == sealed.request_secret and req.enc == sealed.enc
    assert sealed.request_secret.hex() not in repr(req) + repr(sealed)
    assert "héllo" not in repr(req)


def test_padding_hides_prompt_length_within_a_block() -> None:
    pk = KEYS[X].public_key
    sizes = {
        len(seal_request(pk, "x" * n, sent_at=SENT_AT, pad_block=512).wire)
        for n in range(0, 400, 37)
    }
    assert len(sizes) == 1
    unpadded = {
        len(seal_request(pk, "x" * n, sent_at=SENT_AT, pad_block=1).wire) for n in (1, 2, 3)
    }
    assert len(unpadded) == 3
    wire = seal_request(pk, "x" * 500, sent_at=SENT_AT, pad_block=512).wire
    overhead = HEADER_LEN + SUITE_PARAMS[X].enc_len + 16
    assert len(wire) - overhead == 1024


def _forge(plaintext: bytes, suite: SuiteId = X) -> bytes:
    """A request with a hand-made plaintext: anyone with the public key can send one."""
    pk = KEYS[suite].public_key
    header = request_header(suite, pk.key_id)
    return header + hpke_suite.seal(pk, request_info(header), b"", plaintext)


def _plain(
    record_size: int = 32,
    max_new: int = 8,
    temp: int = 0,
    top_p: int = 1000,
    prompt: bytes = b"hi",
    sent_at: int = SENT_AT,
) -> bytes:
    """A version-2 plaintext, written out field by field (the layout of token-stream.md §3)."""
    return (
        bytes(REQUEST_SECRET_LEN)
        + struct.pack(">QHIHHI", sent_at, record_size, max_new, temp, top_p, len(prompt))
        + prompt
    )


def test_plaintext_layout_is_pinned() -> None:
    """sent_at is the u64 right after the secret; the rest follows it as in version 1."""
    plain = b"\x5a" * 32 + bytes.fromhex("000000006b0ac24000400000000703e801f400000002") + b"ok"
    assert len(plain) == PLAINTEXT_FIXED_LEN + 2 == 56
    req = open_request(KEYS[X], _forge(plain))
    assert req.request_secret == b"\x5a" * 32
    assert req.sent_at == 0x6B0AC240 == SENT_AT
    assert req.record_size == 64 and req.prompt == "ok"
    assert req.params == GenerationParams(7, 1000, 500)


@pytest.mark.parametrize("sent_at", [0, 1, SENT_AT, MAX_SENT_AT])
def test_any_u64_send_time_parses(sent_at: int) -> None:
    """The parser takes every u64: judging the time is the replay guard's job, not the format's."""
    assert open_request(KEYS[X], _forge(_plain(sent_at=sent_at))).sent_at == sent_at


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
    wire = seal_request(KEYS[X].public_key, "hi", sent_at=SENT_AT).wire
    for version in (0, 3, 255):
        with pytest.raises(ParseError, match="version") as info:
            open_request(KEYS[X], bytes([version]) + wire[1:])
        assert info.value.field == "version"
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
    wire = seal_request(KEYS[X].public_key, "hi", sent_at=SENT_AT).wire
    header = request_header(X, KEYS[X].public_key.key_id)
    with pytest.raises(hpke_suite.HpkeOpenError):
        hpke_suite.open(KEYS[X], request_info(header[:-1] + b"\x00"), b"", wire[HEADER_LEN:])


def test_version_1_is_refused_with_its_reason() -> None:
    """A version-1 request carries no send time, so its replay could not be refused: the
    enclave refuses it at the header, saying why, before any decryption."""
    v1_header = bytes([1, X]) + KEYS[X].public_key.key_id
    v1_plain = _plain()[:REQUEST_SECRET_LEN] + _plain()[REQUEST_SECRET_LEN + 8 :]
    v1 = v1_header + hpke_suite.seal(KEYS[X].public_key, request_info(v1_header), b"", v1_plain)
    with pytest.raises(ParseError, match="version 1 carries no send time") as info:
        open_request(KEYS[X], v1)
    assert (info.value.field, info.value.offset) == ("version", 0)


def test_seal_bounds() -> None:
    pk = KEYS[X].public_key
    with pytest.raises(InputError):
        seal_request(pk, "x", sent_at=SENT_AT, record_size=8)
    with pytest.raises(InputError):
        seal_request(pk, "x" * MAX_REQUEST_PLAINTEXT, sent_at=SENT_AT)
    with pytest.raises(InputError):
        seal_request(pk, "x", sent_at=SENT_AT, pad_block=0)
    with pytest.raises(InputError):
        GenerationParams(max_new_tokens=0)
    for bad_time in (-1, MAX_SENT_AT + 1, True, 1.5, "1"):
        with pytest.raises(InputError, match="sent_at"):
            seal_request(pk, "x", sent_at=bad_time)  # type: ignore[arg-type]


@pytest.mark.parametrize("prompt", ["hi \udc80", "\ud800", "secret words \udfff then more"])
def test_a_prompt_that_is_not_utf8_is_an_input_error_that_does_not_carry_it(prompt: str) -> None:
    """Reached by ClientStream.start, EnclaveClient.generate and ``lessee client generate
    --prompt`` (argv bytes that are not UTF-8 decode to lone surrogates): it raised a bare
    UnicodeEncodeError whose ``.object`` is the whole prompt, into logs and tracebacks."""
    for call in (
        lambda: seal_request(KEYS[X].public_key, prompt, sent_at=SENT_AT),
        lambda: start(verified(), prompt),
    ):
        with pytest.raises(InputError, match="prompt is not valid text") as info:
            call()
        exc = info.value
        assert type(exc) is InputError
        assert exc.__cause__ is None and exc.__context__ is None
        assert prompt not in str(exc) and prompt not in repr(exc.args)
        assert "secret" not in str(exc) and "hi " not in str(exc)
    with pytest.raises(InputError, match="prompt must be text"):
        seal_request(KEYS[X].public_key, b"hi", sent_at=SENT_AT)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_v2_round_trip_and_every_byte_change_is_a_typed_error(data: st.DataObject) -> None:
    """Any version-2 request opens to exactly what was sealed (send time included), and any
    single-byte change of its wire, or any truncation, is refused with a typed error: the
    header's own error for bytes 0..33 (version or suite: ParseError; key id: unknown_key),
    the one opaque StreamError for enc and ciphertext."""
    suite = data.draw(st.sampled_from(list(SuiteId)))
    sent_at = data.draw(st.integers(0, MAX_SENT_AT))
    params = GenerationParams(
        max_new_tokens=data.draw(st.integers(1, 1 << 20)),
        temperature_milli=data.draw(st.integers(0, 10_000)),
        top_p_milli=data.draw(st.integers(1, 1000)),
    )
    prompt = data.draw(st.text(max_size=40))
    record_size = data.draw(st.integers(16, 16 * 1024))
    sealed = seal_request(
        KEYS[suite].public_key,
        prompt,
        sent_at=sent_at,
        params=params,
        record_size=record_size,
        pad_block=data.draw(st.sampled_from([1, 64, 512])),
    )
    wire = sealed.wire
    req = open_request(KEYS[suite], wire)
    assert (req.sent_at, req.prompt, req.params, req.record_size) == (
        sent_at,
        prompt,
        params,
        record_size,
    )
    assert (req.request_secret, req.enc, req.raw) == (sealed.request_secret, sealed.enc, wire)
    i = data.draw(st.integers(0, len(wire) - 1))
    flipped = bytearray(wire)
    flipped[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(LesseeError) as info:
        open_request(KEYS[suite], bytes(flipped))
    if i == 0:
        assert isinstance(info.value, ParseError) and info.value.field == "version"
    elif i == 1:  # another suite id: unknown, or the other suite's lengths or key
        assert isinstance(info.value, ParseError | VerificationError)
    elif i < HEADER_LEN:
        assert isinstance(info.value, VerificationError)
        assert info.value.reason == "unknown_key"
    else:  # enc or ciphertext: the one opaque error
        assert isinstance(info.value, StreamError)
    with pytest.raises(LesseeError):
        open_request(KEYS[suite], wire[: data.draw(st.integers(0, len(wire) - 1))])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=700))
def test_random_bytes_only_typed_errors(data: bytes) -> None:
    with pytest.raises(LesseeError):
        open_request(KEYS[X], data)
