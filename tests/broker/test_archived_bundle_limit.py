"""The evidence a broker archives must be readable by the audit replay."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attest.bundle import MAX_BUNDLE_BYTES, load_bundle
from attest.errors import InputError
from tests.audit.helpers import MODEL, build, enclave_key, evidence


def test_a_bundle_whose_archived_json_is_too_large_is_refused_before_the_nonce_is_spent(
    tmp_path: Path,
) -> None:
    """The protobuf bound (8 MiB) let through a bundle whose JSON -- the bytes the log archives,
    base64 and so 4/3 larger -- ``load_bundle`` then refused: the replay marked the honest
    broker's entry ``evidence_malformed``. Now Attest refuses it first, the nonce unspent."""
    b = build(tmp_path, stand_in=True)
    try:
        good = evidence()
        gpu = dataclasses.replace(good.gpus[0], rims=(b"\x00" * (6 * 1024 * 1024 + 512 * 1024),))
        large = dataclasses.replace(good, gpus=(gpu,))
        assert len(large.to_json()) > MAX_BUNDLE_BYTES  # ~6.5 MiB of bytes, ~8.7 MiB archived
        ch = b.broker.challenge(MODEL)
        key = enclave_key()
        with pytest.raises(InputError, match="as archived"):
            b.broker.attest(nonce=ch.nonce, enclave_public_key=key, model_id=MODEL, bundle=large)
        out = b.broker.attest(nonce=ch.nonce, enclave_public_key=key, model_id=MODEL, bundle=good)
        assert out.result  # the nonce was not spent by the refusal
        assert load_bundle(good.to_json()) == good
    finally:
        b.close()
