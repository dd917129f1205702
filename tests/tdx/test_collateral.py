"""Collateral parsing: both real shapes, exact signed bytes, strictness."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from attest.errors import InputError
from attest.tdx.collateral import (
    CollateralParseError,
    collateral_from_pcs,
    parse_collateral_json,
    parse_qe_identity_response,
    parse_tcb_info_response,
    raw_member_spans,
)
from attest.tdx.verify import verify_signed_json
from tests.tdx import helpers as h


def test_v3_json_keeps_exact_signed_strings() -> None:
    doc = json.loads(h.read(h.DCAP / "tdx_quote_collateral.json"))
    c = h.dcap_collateral()
    assert c.tcb_info.signed_bytes == doc["tcb_info"].encode()
    assert c.qe_identity.signed_bytes == doc["qe_identity"].encode()
    assert c.tcb_info.fmspc.hex() == "b0c06f000000" and c.tcb_info.version == 3
    assert [i.id for i in c.tcb_info.tdx_module_identities] == ["TDX_03", "TDX_01"]
    assert c.tcb_info.tcb_levels[1].advisory_ids[0] == "INTEL-SA-00106"
    assert c.qe_identity.mrsigner.hex().startswith("dc9e2a7c")
    assert c.qe_identity.attributes_mask.hex() == "fbffffffffffffff0000000000000000"
    assert c.pck_crl.crl.issuer.rfc4514_string().endswith("CN=Intel SGX PCK Platform CA")


def test_pcs_response_signed_span_is_the_served_bytes() -> None:
    body = h.read(h.GTG / "sample_tcbInfo_response")
    t = parse_tcb_info_response(body)
    assert body.startswith(b'{"tcbInfo":' + t.signed_bytes + b',"signature":"')
    signer = h.dcap_collateral().tcb_info_issuer_chain[0]
    verify_signed_json(t.signed_bytes, t.signature, signer, what="TCB Info", reason="r")
    # Whitespace around members is allowed by JSON and does not change the signed span.
    spaced = body.replace(b'{"tcbInfo":', b'{ "tcbInfo" :\n ', 1)
    assert parse_tcb_info_response(spaced).signed_bytes == t.signed_bytes


def test_collateral_from_pcs_assembles_everything() -> None:
    c = h.dcap_collateral()
    chain_pem = b"".join(x.public_bytes(Encoding.PEM) for x in c.tcb_info_issuer_chain)
    col = collateral_from_pcs(
        tcb_info_response=h.read(h.GTG / "sample_tcbinfo_response_v5"),
        tcb_info_issuer_chain=chain_pem,
        qe_identity_response=h.read(h.GTG / "sample_qeIdentity_response"),
        qe_identity_issuer_chain=chain_pem,
        pck_crl=h.read(h.GTG / "pckcrl"),
        pck_crl_issuer_chain=chain_pem,
        root_ca_crl=h.read(h.GTG / "rootcrl.der"),
    )
    assert col.tcb_info.fmspc.hex() == "90c06f000000"
    assert col.qe_identity.isv_prod_id == 2
    assert len(col.pck_crl.crl) == 44


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("pck_crl"),
        lambda d: d.update(extra="x"),
        lambda d: d.update(tcb_info_signature="00" * 63),
        lambda d: d.update(root_ca_crl="zz"),
        lambda d: d.update(pck_crl="3000"),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"version":3', '"version":2')),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"id":"TDX"', '"id":"SGX"')),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"UpToDate"', '"Great"', 1)),
        lambda d: d.update(
            tcb_info=d["tcb_info"].replace('"fmspc":"B0C06F000000"', '"fmspc":"B0C06F"')
        ),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"tcbType":0', '"tcbType":0,"new":1')),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"pcesvn":11', '"pcesvn":11.0')),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"pcesvn":11', '"pcesvn":true')),
        lambda d: d.update(
            tcb_info=d["tcb_info"].replace(
                '"issueDate":"2025-06-19T10:16:03Z"', '"issueDate":"yesterday"'
            )
        ),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"id":"TDX"', '"id":"TDX","id":"TDX"')),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"svn":0}', '"svn":NaN}', 1)),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"id":"TDX_03"', '"id":"TDX_01"')),
        lambda d: d.update(qe_identity=d["qe_identity"].replace('"id":"TD_QE"', '"id":"QE"')),
        lambda d: d.update(qe_identity=d["qe_identity"].replace('"isvprodid":2', '"isvprodid":-1')),
        lambda d: d.update(qe_identity_issuer_chain="nope"),
        lambda d: d.update(qe_identity="\ud800"),
    ],
)
def test_v3_json_strict(mutate: object) -> None:
    doc = json.loads(h.read(h.DCAP / "tdx_quote_collateral.json"))
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(InputError):  # CollateralParseError is an InputError
        parse_collateral_json(json.dumps(doc).encode())


def test_pcs_response_strict() -> None:
    body = h.read(h.GTG / "sample_qeIdentity_response")
    assert parse_qe_identity_response(body).id == "TD_QE"
    for bad in (
        body + b"x",
        body.replace(b'"signature"', b'"sig"'),
        body[:-1] + b',"extra":1}',
        b'{"enclaveIdentity":[],"signature":"00"}',
        b"[]",
        body.replace(b'{"enclaveIdentity":', b'{"enclaveIdentity":{"a":1},"enclaveIdentity":', 1),
    ):
        with pytest.raises(CollateralParseError):
            parse_qe_identity_response(bad)


def test_raw_member_spans_deep_and_duplicate() -> None:
    assert raw_member_spans('{"a": [1, 2] , "b":{}}') == {"a": (6, 12), "b": (19, 21)}
    with pytest.raises(CollateralParseError):
        raw_member_spans('{"a":' + "[" * 100 + "]" * 100 + "}")
    with pytest.raises(CollateralParseError):
        raw_member_spans('{"a":1,"a":2}')


def test_size_bounds() -> None:
    with pytest.raises(InputError):
        parse_collateral_json(b" " * (3 * 1024 * 1024))
    with pytest.raises(InputError):
        parse_tcb_info_response(b" " * (300 * 1024))
