from __future__ import annotations

import pytest

from attest.errors import InputError
from sealing.hpke_suite import MAX_INFO_LEN, SuiteId, generate_keypair
from sealing.keyrelease import (
    KEY_RELEASE_LABEL,
    MAX_MODEL_VERSION,
    HpkeOpenError,
    open_data_key,
    release_info,
    seal_data_key,
)
from sealing.weights import _format

IDS = {"model_id": "llama", "model_version": 3, "key_id": "k1", "result_id": "r1"}


@pytest.mark.parametrize("suite", list(SuiteId))
def test_round_trip_and_binding(suite: SuiteId) -> None:
    sk = generate_keypair(suite)
    dek = bytes(range(32))
    blob = seal_data_key(sk.public_key, dek, **IDS)  # type: ignore[arg-type]
    assert dek not in blob
    assert open_data_key(sk, blob, **IDS) == dek  # type: ignore[arg-type]
    for field, value in (
        ("model_id", "other"),
        ("model_version", 2),
        ("key_id", "k2"),
        ("result_id", "r2"),
    ):
        with pytest.raises(HpkeOpenError):
            open_data_key(sk, blob, **{**IDS, field: value})  # type: ignore[arg-type]
    with pytest.raises(HpkeOpenError):
        open_data_key(generate_keypair(suite), blob, **IDS)  # type: ignore[arg-type]
    with pytest.raises(HpkeOpenError):
        open_data_key(sk, blob[:-1] + bytes([blob[-1] ^ 1]), **IDS)  # type: ignore[arg-type]


def test_default_suite_is_post_quantum_hybrid() -> None:
    sk = generate_keypair()
    assert sk.suite is SuiteId.MLKEM768_X25519_SHA256_AES256GCM
    assert len(sk.public_key.raw) == 1216


def test_release_info_layout_is_exactly_the_documented_bytes() -> None:
    """docs/formats/sealed-weights.md documents this layout; the broker and agent must agree."""
    info = release_info(model_id="llama", model_version=0x01020304, key_id="k1", result_id="r1")
    assert info == (
        b"\x00\x15lessee/v1/key-release"
        + b"\x00\x05llama"
        + b"\x01\x02\x03\x04"
        + b"\x00\x02k1"
        + b"\x00\x02r1"
    )


def test_every_sealable_version_is_releasable() -> None:
    """One range: what ``seal_bytes``/``lessee seal`` accept, release_info can bind."""
    assert MAX_MODEL_VERSION == _format.MAX_MODEL_VERSION == 2**32 - 1
    top = release_info(model_id="m", model_version=MAX_MODEL_VERSION, key_id="k", result_id="r")
    assert top[2 + len(KEY_RELEASE_LABEL) + 3 : 2 + len(KEY_RELEASE_LABEL) + 7] == b"\xff" * 4
    sk = generate_keypair(SuiteId.X25519_SHA256_AES256GCM)
    ids = {**IDS, "model_version": MAX_MODEL_VERSION}
    blob = seal_data_key(sk.public_key, bytes(32), **ids)  # type: ignore[arg-type]
    assert open_data_key(sk, blob, **ids) == bytes(32)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [2**32, 2**63 - 1, -1, True, 1.0])
def test_out_of_range_versions_are_a_typed_input_error(version: object) -> None:
    with pytest.raises(InputError, match="model version"):
        release_info(model_id="m", model_version=version, key_id="k", result_id="r")  # type: ignore[arg-type]
    sk = generate_keypair(SuiteId.X25519_SHA256_AES256GCM)
    with pytest.raises(InputError, match="model version"):
        seal_data_key(sk.public_key, bytes(32), **{**IDS, "model_version": version})  # type: ignore[arg-type]


def test_an_overlong_text_field_is_a_typed_input_error() -> None:
    with pytest.raises(InputError, match="result id"):
        release_info(model_id="m", model_version=1, key_id="k", result_id="r" * 65536)


def _info_len(result_id_len: int) -> int:
    base = release_info(model_id="acme/m", model_version=1, key_id="lsw1-x", result_id="")
    return len(base) + result_id_len


def test_release_info_is_bounded_by_what_hpke_seal_takes() -> None:
    """release_info once took up to 65535 bytes per text while hpke_suite.seal takes a 4096-byte
    info: seal_data_key failed with a bare ValueError in between. The bound is now checked in
    release_info itself, the same for the broker (seal) and the agent (open)."""
    sk = generate_keypair(SuiteId.X25519_SHA256_AES256GCM)
    fits = {"model_id": "acme/m", "model_version": 1, "key_id": "lsw1-x"}
    top = "r" * (MAX_INFO_LEN - _info_len(0))
    assert len(release_info(**fits, result_id=top)) == MAX_INFO_LEN  # type: ignore[arg-type]
    blob = seal_data_key(sk.public_key, bytes(32), **fits, result_id=top)  # type: ignore[arg-type]
    assert open_data_key(sk, blob, **fits, result_id=top) == bytes(32)  # type: ignore[arg-type]
    over = {**fits, "result_id": top + "r"}
    for call in (
        lambda: release_info(**over),  # type: ignore[arg-type]
        lambda: seal_data_key(sk.public_key, bytes(32), **over),  # type: ignore[arg-type]
        lambda: open_data_key(sk, blob, **over),  # type: ignore[arg-type]
    ):
        with pytest.raises(InputError, match=f"bound is {MAX_INFO_LEN}") as info:
            call()
        assert type(info.value) is InputError
    with pytest.raises(InputError, match="release info"):
        release_info(**{**fits, "result_id": "r" * 5000})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "label"), [("model_id", "model id"), ("key_id", "key id"), ("result_id", "result id")]
)
def test_text_that_is_not_utf8_is_a_typed_input_error(field: str, label: str) -> None:
    """A lone surrogate (Python's stand-in for undecodable argv bytes) raised a bare
    UnicodeEncodeError from release_info, seal_data_key and open_data_key alike."""
    sk = generate_keypair(SuiteId.X25519_SHA256_AES256GCM)
    ids = {**IDS, field: "x\ud800"}
    for call in (
        lambda: release_info(**ids),  # type: ignore[arg-type]
        lambda: seal_data_key(sk.public_key, bytes(32), **ids),  # type: ignore[arg-type]
        lambda: open_data_key(sk, bytes(100), **ids),  # type: ignore[arg-type]
    ):
        with pytest.raises(InputError, match=f"{label} is not valid text") as info:
            call()
        assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(InputError, match=f"{label} must be text"):
        release_info(**{**IDS, field: None})  # type: ignore[arg-type]
