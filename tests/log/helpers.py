"""Committed test keys and entry builders for the log tests (never used outside tests)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from attest.log.cosignature import Cosigner
from attest.log.entry import (
    BlobRef,
    LogEntry,
    RefusalReason,
    attest_entry,
    release_entry,
    release_refused_entry,
)
from attest.log.note import NoteSigner

#: Test seeds are SHA-256 of a label, so anyone can regenerate them; they guard nothing.
LOG_SIGNER = NoteSigner("log.lessee.test/audit", hashlib.sha256(b"lessee test log key").digest())
OTHER_SIGNER = NoteSigner("log.lessee.test/audit", hashlib.sha256(b"lessee other key").digest())
WITNESS = Cosigner("witness.lessee.test/w1", hashlib.sha256(b"lessee test witness 1").digest())
WITNESS2 = Cosigner("witness.lessee.test/w2", hashlib.sha256(b"lessee test witness 2").digest())

T0 = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
POLICY = b'{"policy":"default","version":1}'
EAR = "eyJhbGciOiJFUzI1NiJ9.eyJlYXIiOiJ0ZXN0In0.c2lnbmF0dXJl"
#: What a version-2 release or refusal names: the registered model version and manifest digest.
MODEL_VERSION = 7
MANIFEST = hashlib.sha256(b"sealed manifest of example/model-7b").digest()


def evidence_bytes(i: int) -> bytes:
    return b"SNP report for entry %d " % i + bytes(64)


def make_entry(i: int, *, v2: bool = False) -> tuple[LogEntry, list[bytes]]:
    """Entry ``i``: even = attest (CPU report + shared policy), odd = release (version 1, as
    older brokers wrote it; ``v2``: version 2, naming ``MODEL_VERSION`` and ``MANIFEST``)."""
    nonce = hashlib.sha256(b"nonce %d" % i).digest()[:16]
    binding = hashlib.sha256(b"binding %d" % (i // 2)).digest()
    policy = BlobRef.of("policy", "application/json", POLICY)
    at = T0 + timedelta(seconds=i)
    if i % 2 == 0:
        ev = evidence_bytes(i)
        entry = attest_entry(
            at=at,
            nonce=nonce,
            binding=binding,
            policy=policy,
            verifier="lessee 0.1.0",
            result=EAR,
            evidence=[BlobRef.of("cpu0.report", "application/octet-stream", ev)],
        )
        return entry, [POLICY, ev]
    entry = release_entry(
        at=at,
        nonce=nonce,
        binding=binding,
        policy=policy,
        verifier="lessee 0.1.0",
        result=EAR,
        model_id="example/model-7b",
        recipient_key_sha256=hashlib.sha256(b"enclave key %d" % (i // 2)).digest(),
        model_version=MODEL_VERSION if v2 else None,
        manifest_sha256=MANIFEST if v2 else None,
    )
    return entry, [POLICY]


def make_refusal_entry(
    i: int, reason: RefusalReason = RefusalReason.NOT_AFFIRMING, *, v2: bool = False
) -> tuple[LogEntry, list[bytes]]:
    """Entry ``i`` as a refused release (the fields ``make_entry`` gives a release)."""
    nonce = hashlib.sha256(b"nonce %d" % i).digest()[:16]
    entry = release_refused_entry(
        at=T0 + timedelta(seconds=i),
        nonce=nonce,
        binding=hashlib.sha256(b"binding %d" % (i // 2)).digest(),
        policy=BlobRef.of("policy", "application/json", POLICY),
        verifier="lessee 0.1.0",
        result=EAR,
        model_id="example/model-7b",
        recipient_key_sha256=hashlib.sha256(b"enclave key %d" % (i // 2)).digest(),
        reason=reason,
        model_version=MODEL_VERSION if v2 else None,
        manifest_sha256=MANIFEST if v2 else None,
    )
    return entry, [POLICY]
