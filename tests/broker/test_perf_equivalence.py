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
        if b.cpu.crl is not None:  # the optional AMD CRL: present only when supplied
            cpu["snp"]["crl"] = b64(b.cpu.crl)
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
    st.builds(
        SnpEvidenceIn,
        st.binary(max_size=64),
        _blobs,
        st.one_of(st.none(), st.binary(min_size=1, max_size=64)),
    ),
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


def test_bundle_json_collateral_memo_changes_no_bytes() -> None:
    """The collateral encodings are remembered by exact bytes: the same bytes in new objects
    hit, different bytes never do, items over the size bound and reports are never kept, and
    every answer is still ``json.dumps`` of the document."""
    from attest.bundle import MAX_CACHED_ENCODING_INPUT_BYTES, _b64_cached

    big = bytes(range(256)) * (MAX_CACHED_ENCODING_INPUT_BYTES // 256 + 1)
    rim = b"<rim>" + bytes(range(200)) * 20

    def make(report: bytes, chain: bytes) -> EvidenceBundle:
        return EvidenceBundle(
            cpu=SnpEvidenceIn(report, (bytes(bytearray(b"vcek")),)),
            gpus=(
                DeviceEvidenceIn("HOPPER", report, chain, (b"ocsp",), (bytes(bytearray(rim)), big)),
            ),
            cc_mode_on=True,
            devtools_on=False,
        )

    _b64_cached.cache_clear()
    first = make(b"report-1", b"chain-a")
    assert first.to_json() == _reference_json(first)
    misses = _b64_cached.cache_info().misses
    second = make(b"report-2", bytes(bytearray(b"chain-a")))  # equal bytes, new objects
    assert second.to_json() == _reference_json(second)
    assert _b64_cached.cache_info().misses == misses  # every collateral item was a hit
    other = make(b"report-2", b"chain-b")  # one byte string differs: encoded afresh
    assert other.to_json() == _reference_json(other)
    assert _b64_cached.cache_info().misses == misses + 1
    # neither the reports nor the oversized item were ever put in the memo
    assert _b64_cached.cache_info().currsize == misses + 1 == 5
    assert len(big) > MAX_CACHED_ENCODING_INPUT_BYTES


def test_bundle_json_with_an_snp_crl_equals_json_dumps_and_round_trips() -> None:
    """The optional "crl" key sorts between "certificates" and "report"; written only when a
    CRL is present, so bundles without one keep their exact archived bytes."""
    crl = b"0\x82\x03" + bytes(range(256)) * 3
    with_crl = EvidenceBundle(
        cpu=SnpEvidenceIn(b"report", (b"vcek", b"ask-ark"), crl), cc_mode_on=True
    )
    data = with_crl.to_json()
    assert data == _reference_json(with_crl)
    assert b'"certificates":["dmNlaw==","YXNrLWFyaw=="],"crl":"' in data
    assert load_bundle(data) == with_crl
    without = EvidenceBundle(cpu=SnpEvidenceIn(b"report", (b"vcek", b"ask-ark")), cc_mode_on=True)
    assert b'"crl"' not in without.to_json()
    assert without.to_json() == _reference_json(without)
    assert load_bundle(without.to_json()).cpu == SnpEvidenceIn(b"report", (b"vcek", b"ask-ark"))


def test_bundle_json_of_tdx_and_bytearray_items() -> None:
    t = EvidenceBundle(cpu=TdxEvidenceIn(b"quote", b'{"tcb": 1}'), cc_mode_on=False)
    assert t.to_json() == _reference_json(t)
    odd = EvidenceBundle(
        cpu=SnpEvidenceIn(b"r", (bytearray(b"cert"),)),  # type: ignore[arg-type]
        gpus=(DeviceEvidenceIn("H", b"r", memoryview(b"pem"), (), ()),),  # type: ignore[arg-type]
    )
    assert odd.to_json() == _reference_json(odd)
