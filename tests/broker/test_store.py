"""Broker state on real SQLite: single-use nonces under concurrency and across a hard kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from agent.broker.keywrap import (
    KeyWrapper,
    UnwrapError,
    load_or_create_master_key,
    model_context,
)
from agent.broker.store import (
    ModelRecord,
    NonceError,
    ReleaseClaim,
    ResultRecord,
    SqliteBrokerStore,
)
from attest.errors import InputError

NOW = 1_800_000_000.0


def test_nonce_single_use_and_reasons(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    s.issue_nonce(b"n1", model_id="m", now=NOW, expires_at=NOW + 60)
    assert s.consume_nonce(b"n1", now=NOW + 1) == "m"
    with pytest.raises(NonceError) as e:
        s.consume_nonce(b"n1", now=NOW + 2)
    assert e.value.reason == "nonce_used"
    with pytest.raises(NonceError) as e:
        s.consume_nonce(b"zz", now=NOW)
    assert e.value.reason == "nonce_unknown"
    s.issue_nonce(b"n2", model_id="m", now=NOW, expires_at=NOW + 60)
    with pytest.raises(NonceError) as e:
        s.consume_nonce(b"n2", now=NOW + 61)
    assert e.value.reason == "nonce_expired"


def test_concurrent_consumers_exactly_one_wins(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    for i in range(20):
        s.issue_nonce(bytes([i]) * 16, model_id="m", now=NOW, expires_at=NOW + 60)
    wins: list[bytes] = []
    lock = threading.Lock()

    def worker() -> None:
        for i in range(20):
            try:
                s.consume_nonce(bytes([i]) * 16, now=NOW + 1)
            except NonceError:
                continue
            with lock:
                wins.append(bytes([i]))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [bytes([i]) for i in range(20)]


def test_consumed_nonce_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    s = SqliteBrokerStore(db)
    for i in range(200):
        s.issue_nonce(i.to_bytes(4, "big"), model_id="m", now=NOW, expires_at=NOW + 600)
    s.close()
    code = textwrap.dedent(
        f"""
        import sys
        from agent.broker.store import SqliteBrokerStore
        s = SqliteBrokerStore({str(db)!r})
        for i in range(200):
            s.consume_nonce(i.to_bytes(4, "big"), now={NOW + 1})
            print(i, flush=True)
        import time; time.sleep(30)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert proc.stdout is not None
    acked = -1
    for line in proc.stdout:
        acked = int(line)
        if acked == 120:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s2 = SqliteBrokerStore(db)
    for i in range(acked + 1):  # every acknowledged consumption is durable
        with pytest.raises(NonceError) as e:
            s2.consume_nonce(i.to_bytes(4, "big"), now=NOW + 2)
        assert e.value.reason == "nonce_used"
    assert s2.consume_nonce((199).to_bytes(4, "big"), now=NOW + 2) == "m"


def test_models_results_releases(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    m = ModelRecord("m", 3, "k1", b"w" * 61, "{}", "sha256:00", b"d" * 32)
    s.put_model(m)
    assert s.get_model("m") == m
    assert s.get_model("other") is None
    r = ResultRecord("r1", "m", b"k" * 32, b"n" * 32, "affirming", NOW, NOW + 300)
    s.put_result(r)
    assert s.get_result("r1") == r
    s.record_release(result_id="r1", model_id="m", released_at=NOW)
    assert s.count_releases("r1") == 1


def _wrap_format_1(master: bytes, data_key: bytes, *, key_id: str, model_id: str) -> bytes:
    """A data key wrapped as brokers before format 2 wrote it (version byte 1, AAD of the ids)."""
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    aad = KeyWrapper._aad(key_id, model_id)
    return b"\x01" + nonce + AESGCM(master).encrypt(nonce, data_key, aad)


def test_keywrap_binds_ids_and_master_key(tmp_path: Path) -> None:
    key = load_or_create_master_key(tmp_path / "master.key")
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    assert load_or_create_master_key(tmp_path / "master.key") == key
    w = KeyWrapper(key)
    ctx = model_context(
        model_version=3, policy_json="{}", policy_digest="sha256:" + "ab" * 32,
        manifest_digest=b"\x05" * 32,
    )  # fmt: skip
    blob = w.wrap(b"\x07" * 32, key_id="k1", model_id="m", context=ctx)
    assert blob[0] == 2
    assert w.unwrap(blob, key_id="k1", model_id="m", context=ctx) == b"\x07" * 32
    assert b"\x07" * 32 not in blob
    for kw in ({"key_id": "k2", "model_id": "m"}, {"key_id": "k1", "model_id": "other"}):
        with pytest.raises(UnwrapError):
            w.unwrap(blob, **kw, context=ctx)
    with pytest.raises(UnwrapError):
        KeyWrapper(b"\x01" * 32).unwrap(blob, key_id="k1", model_id="m", context=ctx)
    # Each part of the row the context binds: another version, policy text, policy digest or
    # manifest, and the key no longer unwraps.
    for change in (
        {"model_version": 4},
        {"policy_json": "{ }"},
        {"policy_digest": "sha256:" + "cd" * 32},
        {"manifest_digest": b"\x06" * 32},
    ):
        other = model_context(**{  # type: ignore[arg-type]
            "model_version": 3, "policy_json": "{}", "policy_digest": "sha256:" + "ab" * 32,
            "manifest_digest": b"\x05" * 32, **change,
        })  # fmt: skip
        assert other != ctx
        with pytest.raises(UnwrapError):
            w.unwrap(blob, key_id="k1", model_id="m", context=other)
    # Format 1 (before contexts) binds no context, so it is read only when the broker is told
    # to: the format byte is in the database, and a saved format-1 blob could otherwise be put
    # back beside any policy, even after the model was registered again in format 2.
    old = _wrap_format_1(key, b"\x08" * 32, key_id="k1", model_id="m")
    assert old[0] == 1
    with pytest.raises(UnwrapError, match="format 1") as info:
        w.unwrap(old, key_id="k1", model_id="m", context=ctx)
    assert info.value.reason == "unwrap_format_1"
    legacy = KeyWrapper(key, allow_format_1=True)
    assert legacy.unwrap(old, key_id="k1", model_id="m", context=b"anything") == b"\x08" * 32
    with pytest.raises(UnwrapError):
        legacy.unwrap(old, key_id="k2", model_id="m", context=ctx)
    with pytest.raises(UnwrapError, match="wrong format"):
        w.unwrap(b"\x03" + blob[1:], key_id="k1", model_id="m", context=ctx)
    (tmp_path / "loose.key").write_bytes(b"\0" * 32)
    (tmp_path / "loose.key").chmod(0o644)
    with pytest.raises(InputError):
        load_or_create_master_key(tmp_path / "loose.key")


def test_release_claims_name_their_entry_and_only_their_maker_drops_them(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    s.put_result(ResultRecord("r1", "m", b"k" * 32, b"n" * 32, "affirming", NOW, NOW + 300))
    assert s.release_claim("r1") is None
    leaf = b"\x11" * 32
    assert s.claim_release(
        result_id="r1", model_id="m", released_at=NOW, entry_leaf=leaf, log_size=7, instance="a"
    )
    assert s.release_claim("r1") == ReleaseClaim(entry_leaf=leaf, log_size=7, instance="a")
    assert not s.drop_release_claim(result_id="r1", instance="b")  # not b's claim
    assert s.count_releases("r1") == 1
    assert s.drop_release_claim(result_id="r1", instance="a")
    assert not s.drop_release_claim(result_id="r1", instance="a")  # gone already
    assert s.count_releases("r1") == 0 and s.release_claim("r1") is None
    assert s.claim_release(result_id="r1", model_id="m", released_at=NOW)  # usable again


def test_an_older_database_gains_the_claim_columns_and_keeps_its_claims(tmp_path: Path) -> None:
    """A broker.db from before claims named their entry opens with the columns added; its
    claims read as None throughout, so they are never taken for orphans."""
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE results (
          result_id TEXT PRIMARY KEY, model_id TEXT NOT NULL, enclave_key_digest BLOB NOT NULL,
          nonce BLOB NOT NULL UNIQUE, status TEXT NOT NULL, issued_at REAL NOT NULL,
          expires_at REAL NOT NULL);
        CREATE TABLE releases (
          id INTEGER PRIMARY KEY AUTOINCREMENT, result_id TEXT NOT NULL REFERENCES results(result_id),
          model_id TEXT NOT NULL, released_at REAL NOT NULL);
        CREATE UNIQUE INDEX releases_one_per_result ON releases(result_id);
        INSERT INTO releases(result_id, model_id, released_at) VALUES ('old', 'm', 1.0);
        """
    )
    db.close()
    s = SqliteBrokerStore(path)
    assert s.release_claim("old") == ReleaseClaim(entry_leaf=None, log_size=None, instance=None)
    assert not s.claim_release(result_id="old", model_id="m", released_at=NOW)
    s.close()
    SqliteBrokerStore(path).close()  # opening again adds nothing twice


def test_models_wrapped_in_format_1_are_listed(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    w = KeyWrapper(b"\x02" * 32)
    ctx = model_context(
        model_version=1, policy_json="{}", policy_digest="d", manifest_digest=bytes(32)
    )
    for model_id, blob in (
        ("new", w.wrap(bytes(32), key_id="new/v1/a", model_id="new", context=ctx)),
        ("old-b", _wrap_format_1(b"\x02" * 32, bytes(32), key_id="old-b/v1/a", model_id="old-b")),
        ("old-a", _wrap_format_1(b"\x02" * 32, bytes(32), key_id="old-a/v1/a", model_id="old-a")),
    ):
        s.put_model(ModelRecord(model_id, 1, f"{model_id}/v1/a", blob, "{}", "d", bytes(32)))
    assert s.models_wrapped_in_format(1) == ["old-a", "old-b"]
    assert s.models_wrapped_in_format(2) == ["new"]


def test_claim_release_exactly_once_under_concurrency(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    s.put_result(ResultRecord("r1", "m", b"k" * 32, b"n" * 32, "affirming", NOW, NOW + 300))
    barrier = threading.Barrier(8)
    wins: list[bool] = []

    def claim() -> None:
        barrier.wait()
        wins.append(s.claim_release(result_id="r1", model_id="m", released_at=NOW))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    assert s.count_releases("r1") == 1


def test_claim_refusal_once_per_result_and_reason_across_reopen(tmp_path: Path) -> None:
    """The bound on logged refusals: one claim per (result, reason), durable; forgetting a
    claim (its entry could not be logged) lets the next one through."""
    s = SqliteBrokerStore(tmp_path / "b.db")
    assert s.claim_refusal(result_id="r1", reason="not_affirming", refused_at=NOW)
    assert not s.claim_refusal(result_id="r1", reason="not_affirming", refused_at=NOW + 1)
    assert s.claim_refusal(result_id="r1", reason="expired", refused_at=NOW)
    assert s.claim_refusal(result_id="unknown", reason="unknown_result", refused_at=NOW)
    s.close()
    s = SqliteBrokerStore(tmp_path / "b.db")
    assert not s.claim_refusal(result_id="r1", reason="not_affirming", refused_at=NOW)
    s.forget_refusal(result_id="r1", reason="not_affirming")
    assert s.claim_refusal(result_id="r1", reason="not_affirming", refused_at=NOW)
    s.close()


@pytest.mark.parametrize("name", ["master.key", "ear-signing.pem", "log-note.key"])
def test_a_broker_killed_while_creating_its_keys_starts_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Each key file was opened O_EXCL under its final name and then written: a kill in
    between left an empty file there, and every later start was refused (it must hold a key).
    Now a key appears under its name whole or not at all (written under a hidden name,
    synced, then linked); the kill is simulated at the link of the named key."""
    from agent.broker import keywrap
    from agent.broker.config import MASTER_KEY, prepare_state_dir

    state = tmp_path / "state"
    real_link = os.link

    def killed_at(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if Path(str(dst)).name == name:
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after it runs
        real_link(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(keywrap.os, "link", killed_at)
    with pytest.raises(KeyboardInterrupt):
        prepare_state_dir(state)
    assert not (state / name).exists()
    monkeypatch.setattr(keywrap.os, "link", real_link)
    keys = prepare_state_dir(state)  # the restart completes the first-time setup
    assert len(keys.master_key) == 32 and (state / MASTER_KEY).stat().st_size == 32
    assert prepare_state_dir(state).master_key == keys.master_key
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []
