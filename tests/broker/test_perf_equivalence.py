"""The issue #5 speed-ups change no bytes: the bundle JSON and note signatures are exactly what
the straightforward code produced."""

from __future__ import annotations

import base64
import json
from typing import Any

import nacl.signing
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.bundle import (
    DeviceEvidenceIn,
    EvidenceBundle,
    SnpEvidenceIn,
    TdxEvidenceIn,
    load_bundle,
)
from attest.log.note import SIG_TYPE_ED25519, NoteSigner, key_id


def _reference_json(b: EvidenceBundle) -> bytes:
    """``EvidenceBundle.to_json`` as it was before issue #5 (json.dumps of the document)."""

    def b64(x: bytes) -> str:
        return base64.b64encode(x).decode("ascii")

    def dev(d: DeviceEvidenceIn) -> dict[str, Any]:
        return {
            "arch": d.arch,
            "report": b64(d.report),
            "certificate_chain_pem": b64(d.certificate_chain_pem),
            "ocsp_responses": [b64(x) for x in d.ocsp_responses],
            "rims": [b64(x) for x in d.rims],
        }

    cpu: dict[str, Any] | None = None
    if isinstance(b.cpu, SnpEvidenceIn):
        cpu = {
            "snp": {
                "report": b64(b.cpu.report),
                "certificates": [b64(c) for c in b.cpu.certificates],
            }
        }
    elif isinstance(b.cpu, TdxEvidenceIn):
        cpu = {"tdx": {"quote": b64(b.cpu.quote), "collateral_json": b64(b.cpu.collateral_json)}}
    doc = {
        "version": 1,
        "cpu": cpu,
        "gpus": [dev(d) for d in b.gpus],
        "switches": [dev(d) for d in b.switches],
        "cc_mode_on": b.cc_mode_on,
        "devtools_on": b.devtools_on,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


_blobs = st.lists(st.binary(max_size=64), max_size=3).map(tuple)
_devices = st.lists(
    st.builds(
        DeviceEvidenceIn,
        st.text(max_size=12),
        st.binary(max_size=64),
        st.binary(max_size=64),
        _blobs,
        _blobs,
    ),
    max_size=3,
).map(tuple)
_cpus = st.one_of(
    st.none(),
    st.builds(SnpEvidenceIn, st.binary(max_size=64), _blobs),
    st.builds(TdxEvidenceIn, st.binary(max_size=64), st.binary(max_size=64)),
)
_bundles = st.builds(EvidenceBundle, _cpus, _devices, _devices, st.booleans(), st.booleans())


@settings(max_examples=300, deadline=None)
@given(_bundles)
def test_bundle_json_is_byte_identical_to_json_dumps(b: EvidenceBundle) -> None:
    assert b.to_json() == _reference_json(b)


def test_bundle_json_round_trips_with_unicode_arch() -> None:
    b = EvidenceBundle(
        cpu=SnpEvidenceIn(b"\\x00" * 8, (b"c",)),
        gpus=(DeviceEvidenceIn('HOP"PER\u00e9', b"r", b"p", (b"o",), (b"x", b"y")),),
        cc_mode_on=True,
        devtools_on=False,
    )
    data = b.to_json()
    assert data == _reference_json(b)
    assert data.isascii()
    assert load_bundle(data) == b


def test_note_signer_keeps_key_and_signs_as_before() -> None:
    seed = bytes(range(32))
    signer = NoteSigner("example.com/log", seed)
    fresh = nacl.signing.SigningKey(seed)
    assert signer.public_key == bytes(fresh.verify_key)
    assert signer.key_id == key_id("example.com/log", SIG_TYPE_ED25519, bytes(fresh.verify_key))
    sig = signer.sign(b"text\n")
    assert sig.signature == fresh.sign(b"text\n").signature
    assert sig.key_id == signer.key_id
    assert seed.hex() not in repr(signer) and "_signing_key" not in repr(signer)
    assert signer == NoteSigner("example.com/log", seed)
    assert signer != NoteSigner("example.com/log", bytes(32))
