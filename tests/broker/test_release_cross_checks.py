"""The broker's release checks its own record of a result against the result's signed claims.

A result and its record come from the same broker, so they agree unless something changed one
of them: the broker database alone (restored from elsewhere, edited by someone who can write
that file but holds no key), or a bug. Each check is tested by making exactly the one field
it compares disagree (mutation testing found that no test did)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.broker.service import NonceError, ReleaseRefusedError
from tests.audit.helpers import MODEL, STAND_IN_POLICY, Built, build, enclave_key, evidence

OTHER_MODEL = "other-model-13b"


def _built(tmp_path: Path) -> Built:
    b = build(tmp_path, stand_in=True)
    b.broker.register_model(
        model_id=OTHER_MODEL,
        model_version=1,
        data_key=bytes(32),
        policy_json=STAND_IN_POLICY,  # the same policy: only the model differs
        manifest_digest=bytes(32),
    )
    return b


def _edit_result(b: Built, column: str, value: object) -> None:
    db = sqlite3.connect(b.dir / "broker.db")
    try:
        with db:
            assert db.execute(f"UPDATE results SET {column} = ?", (value,)).rowcount == 1
    finally:
        db.close()


def test_a_nonce_issued_for_one_model_attests_for_no_other(tmp_path: Path) -> None:
    b = _built(tmp_path)
    try:
        ch = b.broker.challenge(MODEL)
        with pytest.raises(NonceError) as err:
            b.broker.attest(
                nonce=ch.nonce, enclave_public_key=enclave_key(), model_id=OTHER_MODEL,
                bundle=evidence(),
            )  # fmt: skip
        assert err.value.reason == "nonce_model"
    finally:
        b.close()


@pytest.mark.parametrize(
    ("column", "value", "release_for", "reason"),
    [
        # The record names the model asked for; the signed claim names another.
        ("model_id", OTHER_MODEL, OTHER_MODEL, "model_mismatch"),
        # The signed claim is affirming; the record says otherwise.
        ("status", "contraindicated", MODEL, "not_affirming"),
        # The record's expiry passed; the signed one has not.
        ("expires_at", 0.0, MODEL, "expired"),
        # The record names another enclave key than the signed claim.
        ("enclave_key_digest", bytes(32), MODEL, "key_mismatch"),
    ],
)
def test_a_record_that_disagrees_with_the_signed_result_refuses_the_release(
    tmp_path: Path, column: str, value: object, release_for: str, reason: str
) -> None:
    b = _built(tmp_path)
    try:
        token = b.attest(evidence())
        _edit_result(b, column, value)
        with pytest.raises(ReleaseRefusedError) as err:
            b.broker.release_key(result=token, model_id=release_for)
        assert err.value.reason == reason
    finally:
        b.close()


def test_a_record_edited_to_affirming_does_not_release_a_contraindicated_result(
    tmp_path: Path,
) -> None:
    b = _built(tmp_path)
    try:
        token = b.attest(evidence(cc_mode_on=False))  # the stand-in appraiser refuses it
        _edit_result(b, "status", "affirming")
        with pytest.raises(ReleaseRefusedError) as err:
            b.broker.release_key(result=token, model_id=MODEL)
        assert err.value.reason == "not_affirming"
    finally:
        b.close()
