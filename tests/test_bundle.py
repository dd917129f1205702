from __future__ import annotations

import base64
import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.bundle import (
    DeviceEvidenceIn,
    EvidenceBundle,
    SnpEvidenceIn,
    TdxEvidenceIn,
    load_bundle,
)
from attest.errors import InputError
from attest.snp.verify import MAX_CRL_BYTES
from tests.conftest import CPU, NVIDIA


def _real_bundle() -> EvidenceBundle:
    report = bytes.fromhex((NVIDIA / "hopper/hopperAttestationReport.txt").read_text().strip())
    return EvidenceBundle(
        cpu=SnpEvidenceIn(
            report=(CPU / "snp/go-sev-guest/attestation.bin").read_bytes(),
            certificates=((CPU / "snp/go-sev-guest/vcek.testcer").read_bytes(),),
        ),
        gpus=(
            DeviceEvidenceIn(
                "HOPPER", report, (NVIDIA / "hopper/hopperCertChain.txt").read_bytes()
            ),
        ),
        cc_mode_on=True,
        devtools_on=False,
    )


def test_round_trip_real_evidence() -> None:
    b = _real_bundle()
    assert load_bundle(b.to_json()) == b
    t = EvidenceBundle(
        cpu=TdxEvidenceIn(
            quote=(CPU / "tdx/dcap-qvl/tdx_quote").read_bytes(), collateral_json=b"{}"
        )
    )
    assert load_bundle(t.to_json()) == t


def test_snp_crl_round_trips_up_to_its_bound() -> None:
    """The AMD CRL travels under cpu.snp.crl (base64), bounded by MAX_CRL_BYTES exactly."""
    b = _real_bundle()
    assert isinstance(b.cpu, SnpEvidenceIn)
    largest = dataclasses.replace(b, cpu=dataclasses.replace(b.cpu, crl=b"\x30" * MAX_CRL_BYTES))
    assert load_bundle(largest.to_json()) == largest
    assert (
        json.loads(largest.to_json())["cpu"]["snp"]["crl"]
        == base64.b64encode(b"\x30" * MAX_CRL_BYTES).decode()
    )
    assert "crl" not in json.loads(b.to_json())["cpu"]["snp"]
    with pytest.raises(InputError, match="never empty"):
        SnpEvidenceIn(report=b"r", crl=b"")


def test_missing_nvml_flags_read_as_unsafe() -> None:
    doc = json.loads(_real_bundle().to_json())
    del doc["cc_mode_on"], doc["devtools_on"]
    b = load_bundle(json.dumps(doc).encode())
    assert b.cc_mode_on is False and b.devtools_on is True


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=2),
        lambda d: d.update(extra=1),
        lambda d: d["gpus"][0].update(report="!!"),
        lambda d: d["gpus"][0].update(arch=5),
        lambda d: d.update(cpu={"snp": d["cpu"]["snp"], "tdx": {"quote": ""}}),
        lambda d: d.update(gpus=[d["gpus"][0]] * 65),
        lambda d: d.update(cc_mode_on="yes"),
        lambda d: d["cpu"]["snp"].update(certificates=["AA=="] * 17),
        lambda d: d["cpu"]["snp"].update(crl=""),  # absent means none; empty is refused
        lambda d: d["cpu"]["snp"].update(crl="!!"),
        lambda d: d["cpu"]["snp"].update(crl=None),
        lambda d: d["cpu"]["snp"].update(crl=["AA=="]),
        lambda d: d["cpu"]["snp"].update(
            crl=base64.b64encode(b"\x30" * (MAX_CRL_BYTES + 1)).decode()
        ),
    ],
)
def test_strict(mutate) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(_real_bundle().to_json())
    mutate(doc)
    with pytest.raises(InputError):
        load_bundle(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_input_errors(data: bytes) -> None:
    try:
        load_bundle(data)
    except InputError:
        pass


def test_json_depth_skips_strings_and_counts_nesting() -> None:
    from attest.jsonutil import MAX_JSON_DEPTH, json_depth, load_json

    assert json_depth('[[{"a": "[[[{{{"}]]') == 3
    assert json_depth('["\\\\", [1]]') == 2
    assert json_depth('{"x": "a\\"[[["}') == 1
    with pytest.raises(InputError, match="nested deeper"):
        load_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), what="t")
    assert load_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, what="t") is not None


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


_TRICKY_TEXT = st.text(alphabet='[]{}"\\ab\n\u00e9', max_size=12)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TRICKY_TEXT, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(_JSON_VALUES, st.booleans(), st.booleans())
def test_json_depth_is_exact_for_valid_json(value: object, ascii: bool, spaced: bool) -> None:
    """Strings full of brackets, quotes and backslashes (escaped as json.dumps escapes them,
    with and without non-ASCII escapes and spaces): the depth is the structure's, exactly."""
    from attest.jsonutil import json_depth

    text = json.dumps(value, ensure_ascii=ascii, indent=1 if spaced else None)
    assert json_depth(text) == _depth(value)


def test_json_depth_on_hand_written_escapes() -> None:
    from attest.jsonutil import json_depth

    cases = {
        r'["\\\\\"[", [[1]]]': 3,  # two escaped backslashes, then an escaped quote
        r'{"a\\": [{"b": "\\"}]}': 3,  # strings that end in an escaped backslash
        r'["\\\\", "]]", [["\\"]]]': 3,
    }
    for text, depth in cases.items():
        json.loads(text)  # each is valid JSON
        assert json_depth(text) == depth, text
    assert json_depth("[]") == 1 and json_depth("1") == 0 and json_depth("") == 0


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_bundle_bytes_are_utf8_without_bom_only(encoding: str) -> None:
    """``json.loads(bytes)`` guesses UTF-16/32 and skips a BOM; the bundle (archived, compared
    by hash) has one byte spelling: UTF-8, no BOM (RFC 8259 section 8.1)."""
    doc = '{"version": 1, "cpu": null, "gpus": [], "cc_mode_on": true, "devtools_on": false}'
    assert load_bundle(doc.encode()).cc_mode_on
    with pytest.raises(InputError, match=r"not UTF-8|byte order mark|malformed"):
        load_bundle(doc.encode(encoding))


def test_depth_bound_holds_for_what_the_parser_reads() -> None:
    """The depth scan read a lenient UTF-8 decode while ``json.loads`` decoded UTF-16 itself:
    U+4122 encodes as ``22 41`` (a ``"`` to the scan), which hid 200 levels of nesting behind
    a string the scan never closed. Bytes are now decoded once, strictly, for both."""
    from attest.jsonutil import MAX_JSON_DEPTH, load_json

    text = '["\u4122", ' + "[" * 200 + "]" * 200 + ', "x"]'
    with pytest.raises(InputError, match="not UTF-8"):
        load_json(text.encode("utf-16"), what="t")
    with pytest.raises(InputError, match=f"t: JSON nested deeper than {MAX_JSON_DEPTH}"):
        load_json(text.encode("utf-8"), what="t")
    with pytest.raises(InputError, match="byte order mark"):
        load_json("\ufeff{}", what="t")
    with pytest.raises(InputError, match="byte order mark"):
        load_json(b"\xef\xbb\xbf{}", what="t")
    with pytest.raises(InputError, match=r"t is not UTF-8 \(invalid byte at offset 6\)"):
        load_json(b'{"a": \xff}', what="t")
    assert load_json('{"\u00e9": "\u4122"}'.encode(), what="t") == {"\u00e9": "\u4122"}


@pytest.mark.parametrize("version", ["true", "1.0", '"1"'])
def test_the_version_is_the_integer_one_only(version: str) -> None:
    """``true`` and ``1.0`` equal ``1`` in Python; a bundle has one spelling (found by review)."""
    with pytest.raises(InputError, match="version must be 1"):
        load_bundle(('{"version":' + version + "}").encode())
    assert load_bundle(b'{"version":1}').cpu is None
