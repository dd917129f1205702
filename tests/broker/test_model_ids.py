"""Model ids with ``/`` (Hugging Face style) register, and their key ids stay unambiguous."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent.broker.keywrap import KeyWrapper
from agent.broker.service import Appraisal, Broker
from agent.broker.store import SqliteBrokerStore
from agent.logstore import LogStore
from attest.errors import InputError
from tests.log.helpers import LOG_SIGNER

POLICY = json.dumps(
    {"name": "t", "cpu_tees": ["snp"], "snp": {"allowed_measurements": ["00" * 48]}}
)


def _no_appraisal(*args: object) -> Appraisal:
    raise AssertionError("registration appraises nothing")


def _broker(tmp_path: Path) -> Broker:
    return Broker(
        store=SqliteBrokerStore(tmp_path / "broker.db"),
        wrapper=KeyWrapper(hashlib.sha256(b"model ids").digest()),
        log=LogStore(tmp_path / "log.db", LOG_SIGNER),
        result_key=ec.generate_private_key(ec.SECP256R1()),
        appraiser=_no_appraisal,
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize("model_id", ["acme/7b", "a/v1/x", "org/name/v2"])
def test_slashes_register_and_the_key_id_reads_from_the_right(
    tmp_path: Path, model_id: str
) -> None:
    broker = _broker(tmp_path)
    try:
        broker.register_model(
            model_id=model_id,
            model_version=3,
            data_key=bytes(32),
            policy_json=POLICY,
            manifest_digest=bytes(32),
        )
        record = broker.store.get_model(model_id)
        assert record is not None
        head, version, suffix = record.key_id.rsplit("/", 2)
        assert (head, version) == (model_id, "v3")
        assert len(suffix) == 16 and int(suffix, 16) >= 0
    finally:
        broker.store.close()
        broker.log.close()


@pytest.mark.parametrize("model_id", ["", "x" * 129, "tab\there", "caf\u00e9"])
def test_other_ids_are_refused(tmp_path: Path, model_id: str) -> None:
    broker = _broker(tmp_path)
    try:
        with pytest.raises(InputError, match="model id"):
            broker.register_model(
                model_id=model_id,
                model_version=1,
                data_key=bytes(32),
                policy_json=POLICY,
                manifest_digest=bytes(32),
            )
    finally:
        broker.store.close()
        broker.log.close()
