from __future__ import annotations

import pytest

from sealing.hpke_suite import SuiteId, generate_keypair
from sealing.keyrelease import HpkeOpenError, open_data_key, seal_data_key

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
