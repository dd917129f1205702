"""The broker parses and hashes a model's policy once per policy text, not once per call."""

from __future__ import annotations

import json
from pathlib import Path

from agent.broker.config import BrokerConfig
from agent.rpc.server import build_broker
from attest.policy import load_policy

POLICY = {"name": "a", "cpu_tees": ["snp"], "snp": {"allowed_measurements": ["00" * 48]}}


def test_policy_is_reused_until_the_model_is_registered_again(tmp_path: Path) -> None:
    broker, res, _ = build_broker(BrokerConfig(state_dir=tmp_path / "state"))
    try:
        text = json.dumps(POLICY)
        record = broker.register_model(
            model_id="m", model_version=1, data_key=bytes(32), policy_json=text,
            manifest_digest=bytes(32),
        )  # fmt: skip
        _, first, digest = broker._model("m")
        _, again, digest_again = broker._model("m")
        assert again is first and digest_again == digest == record.policy_digest
        assert digest == load_policy(text).digest

        changed = json.dumps({**POLICY, "name": "b"})
        broker.register_model(
            model_id="m", model_version=2, data_key=bytes(32), policy_json=changed,
            manifest_digest=bytes(32),
        )  # fmt: skip
        _, newer, new_digest = broker._model("m")
        assert newer is not first and newer.name == "b"
        assert new_digest == load_policy(changed).digest != digest
        assert broker.challenge("m").nonce  # the challenge path uses the same cache
    finally:
        res.log.close()
        res.store.close()


def test_a_policy_changed_behind_the_brokers_back_is_parsed_again(tmp_path: Path) -> None:
    """Another broker replica on the same database re-registers the model: the cached policy
    text no longer matches the stored one, so it is parsed again."""
    broker, res, _ = build_broker(BrokerConfig(state_dir=tmp_path / "state"))
    other, res2, _ = build_broker(BrokerConfig(state_dir=tmp_path / "state"))
    try:
        broker.register_model(model_id="m", model_version=1, data_key=bytes(32),
                              policy_json=json.dumps(POLICY), manifest_digest=bytes(32))  # fmt: skip
        _, first, _ = broker._model("m")
        assert first.name == "a"
        changed = json.dumps({**POLICY, "name": "c"})
        other.register_model(model_id="m", model_version=2, data_key=bytes(32),
                             policy_json=changed, manifest_digest=bytes(32))  # fmt: skip
        _, seen, digest = broker._model("m")
        assert seen.name == "c" and digest == load_policy(changed).digest
    finally:
        for r in (res, res2):
            r.log.close()
            r.store.close()
