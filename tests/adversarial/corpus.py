"""Seeded mutation corpus derived from the real vectors (and the committed synthetic KATs).

Every input format lessee parses or verifies is a *family* here. A family's seeds are real
vendor bytes from ``tests/assets`` (or committed KATs from ``tests/vectors`` and the committed
test keys where no real vector exists), each with a *layout*: the offsets of its length fields,
counts and type bytes and its field boundaries, found by walking the real bytes. From the seeds
the generator derives malformed or tampered inputs with a ``random.Random`` seeded by
(``--seed``, family), so a corpus is a pure function of the code, the vectors and the seed:

* binary: bit flips, hostile byte values at structural offsets, length fields inflated to huge
  values (and 0, ±1), truncation at every field boundary, trailing garbage, duplicated, dropped
  and swapped spans between boundaries, splices between two real inputs, random bytes;
* XML (RIMs): XXE, billion laughs, quadratic blow-up, external DTD, parameter entities,
  XInclude, signature wrapping (forged Payload before the signed one, signed content moved into
  ``ds:Object``, a second Signature), comments and CDATA inside digests, measurement and
  ``active`` edits, encoding tricks;
* JSON: duplicate keys, 10^5-deep nesting, huge and non-finite numbers, wrong types, dropped and
  unknown keys, lone surrogates, BOM, UTF-16;
* PEM: many certificates, garbage between blocks, reordered, duplicated, dropped and foreign
  certificates, corrupted base64, mismatched labels;
* JWT: ``alg: none``, HS256 keyed with the public key, attacker key in a ``jwk`` header,
  ``crit``/``b64``, re-signed forged claims, DER signatures, extra segments;
* signed notes: line drops, duplicates and swaps, forged signature lines, too many signatures.

Tests call :func:`generate` in memory. ``python -m tests.adversarial.corpus --out DIR --seed N
--per-target K`` writes ``DIR/<family>/<index>-<op>.bin`` (plus ``DIR/<family>/seeds/``) for
fuzzers such as ``tests/adversarial/fuzz_atheris.py``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "tests" / "assets"
VECTORS = ROOT / "tests" / "vectors"
NVIDIA = ASSETS / "nvidia"
CPU = ASSETS / "cpu"
AUDIT = ASSETS / "audit"

#: A corpus file name keeps at most this many characters of the operator description.
MAX_OP_NAME = 48
#: Deep-nesting attack depth: far past any parser's recursion limit, still only 200 KB.
DEEP_NESTING = 100_000
#: Size of the "huge" inputs (long strings, oversized numbers, padded garbage): above every
#: per-field bound in the tree yet small enough to keep one input's cost bounded.
HUGE_TEXT = 300_000
#: Hostile byte values written at structural offsets.
HOSTILE_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


# --------------------------------------------------------------------------------------------
# Seeds and layouts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthField:
    """A length or count field: where it is, how wide, which byte order."""

    offset: int
    width: int
    order: str = "little"


@dataclass(frozen=True)
class Layout:
    """Structurally interesting places in one seed, found by walking its real bytes."""

    offsets: tuple[int, ...] = ()
    lengths: tuple[LengthField, ...] = ()
    boundaries: tuple[int, ...] = ()


@dataclass(frozen=True)
class Seed:
    label: str
    data: bytes
    layout: Layout = field(default_factory=Layout)


@dataclass(frozen=True)
class Mutant:
    """One generated input. ``kind`` tells the oracle what a strict parser must do with it:
    ``truncate`` (a proper prefix of a seed) and ``trailing`` (a seed plus appended bytes) must
    be refused by every parser that forbids trailing data; ``tamper`` is anything else."""

    family: str
    seed: str
    op: str
    kind: str
    data: bytes


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _unhex_text(path: Path) -> bytes:
    return bytes.fromhex("".join(path.read_text().split()))


def _layout(
    offsets: Sequence[int], lengths: Sequence[LengthField], bounds: Sequence[int], size: int
) -> Layout:
    return Layout(
        offsets=tuple(sorted({o for o in offsets if 0 <= o < size})),
        lengths=tuple(f for f in lengths if f.offset + f.width <= size),
        boundaries=tuple(sorted({b for b in bounds if 0 < b < size})),
    )


def spdm_layout(data: bytes) -> Layout:
    """Walk an NVIDIA SPDM 1.1 request ‖ MEASUREMENTS response (layout: attest/nvidia/spdm.py)."""
    offs: list[int] = [0, 1, 2, 3, 36]
    lens: list[LengthField] = []
    bounds: list[int] = [4, 36, 37]
    r = 37
    offs += [r, r + 1, r + 2, r + 3, r + 4]
    lens.append(LengthField(r + 4, 1))
    lens.append(LengthField(r + 5, 3))
    bounds += [r + 4, r + 8]
    nblocks = data[r + 4]
    rec_len = int.from_bytes(data[r + 5 : r + 8], "little")
    off = r + 8
    for _ in range(nblocks):
        if off + 7 > len(data):
            break
        offs += [off, off + 1, off + 4]
        lens += [LengthField(off + 2, 2), LengthField(off + 5, 2)]
        bounds += [off, off + 4, off + 7]
        off += 4 + int.from_bytes(data[off + 2 : off + 4], "little")
    off = r + 8 + rec_len
    bounds += [off, off + 32]
    off += 32
    if off + 2 <= len(data):
        lens.append(LengthField(off, 2))
        opaque_len = int.from_bytes(data[off : off + 2], "little")
        bounds.append(off + 2)
        o = off + 2
        end = o + opaque_len
        while o + 4 <= end:
            offs += [o, o + 1]
            lens.append(LengthField(o + 2, 2))
            bounds.append(o)
            o += 4 + int.from_bytes(data[o + 2 : o + 4], "little")
        bounds += [end]
    return _layout(offs, lens, bounds, len(data))


def snp_layout(data: bytes) -> Layout:
    """Every field offset of the SEV-SNP ATTESTATION_REPORT (attest/snp/report.py names them)."""
    from attest.snp import report as r

    offs = [v for k, v in vars(r).items() if k.startswith("OFF_") and isinstance(v, int)]
    sig = r.OFF_SIGNATURE
    offs += [sig, sig + 47, sig + 48, sig + 71, sig + 72, sig + 72 + 47, sig + 72 + 48, sig + 144]
    offs += [0x2C, 0x3C, 0x1E3, 0x1F4, 0x208]  # reserved bytes that must be zero
    return _layout(offs, [LengthField(0, 4)], [*offs, sig, sig + 72, sig + 144], len(data))


def tdx_layout(data: bytes) -> Layout:
    """Walk a TDX v4/v5 quote: header, body, signature data, certification data, PCK PEM."""
    offs = [0, 1, 2, 4, 8, 12, 28]
    lens: list[LengthField] = []
    bounds = [2, 4, 8, 12, 28, 48]
    version = int.from_bytes(data[0:2], "little")
    off = 48
    if version == 5:
        offs += [48]
        lens.append(LengthField(50, 4))
        body_size = int.from_bytes(data[50:54], "little")
        bounds += [50, 54]
        off = 54 + body_size
    else:
        off = 48 + 584
    bounds.append(off)
    lens.append(LengthField(off, 4))
    off += 4
    bounds.append(off)
    sig_start = off
    off += 64 + 64
    bounds += [sig_start + 64, off]
    offs.append(off)
    lens.append(LengthField(off + 2, 4))
    off += 6
    bounds.append(off)
    qe = off
    offs += [qe + 16, qe + 48, qe + 256, qe + 258, qe + 260]
    off += 384 + 64
    bounds += [qe + 384, off]
    lens.append(LengthField(off, 2))
    auth = int.from_bytes(data[off : off + 2], "little")
    off += 2 + auth
    bounds.append(off)
    offs.append(off)
    lens.append(LengthField(off + 2, 4))
    off += 6
    bounds.append(off)
    pem = data[off:]
    for m in re.finditer(rb"-----(BEGIN|END) CERTIFICATE-----", pem):
        bounds += [off + m.start(), off + m.end()]
        offs.append(off + m.start() + 5)
    return _layout(offs, lens, bounds, len(data))


def der_layout(data: bytes, *, max_nodes: int = 4000) -> Layout:
    """Every tag and length position of a DER structure (OCSP responses, certificates)."""
    offs: list[int] = []
    lens: list[LengthField] = []
    bounds: list[int] = []

    def walk(pos: int, end: int, depth: int) -> None:
        while pos < end and len(offs) < max_nodes and depth < 32:
            tag = data[pos]
            offs.append(pos)
            if pos + 1 >= end:
                return
            first = data[pos + 1]
            if first < 0x80:
                length, hdr = first, 2
                lens.append(LengthField(pos + 1, 1, "big"))
            else:
                n = first & 0x7F
                if n == 0 or n > 4 or pos + 2 + n > end:
                    return
                length = int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
                hdr = 2 + n
                offs.append(pos + 1)
                lens.append(LengthField(pos + 2, n, "big"))
            bounds.extend((pos, pos + hdr, pos + hdr + length))
            if tag & 0x20 or tag == 0x04:  # constructed, or an OCTET STRING that wraps DER
                inner_end = min(pos + hdr + length, end)
                if tag == 0x04 and not (pos + hdr < inner_end and data[pos + hdr] == 0x30):
                    pass
                else:
                    walk(pos + hdr, inner_end, depth + 1)
            pos += hdr + length

    walk(0, len(data), 0)
    return _layout(offs, lens, bounds, len(data))


def shard_layout(data: bytes) -> Layout:
    """Sealed shard: fixed header ``>8sHHIBB6sQQ32s``, length-prefixed texts, tag, chunks."""
    from sealing.weights._format import HEADER_FIXED_BYTES, peek_header_length

    fixed = [0, 8, 10, 12, 16, 17, 18, 24, 32, 40]
    lens = [
        LengthField(8, 2, "big"),
        LengthField(10, 2, "big"),
        LengthField(12, 4, "big"),
        LengthField(17, 1, "big"),
        LengthField(24, 8, "big"),
        LengthField(32, 8, "big"),
    ]
    bounds = [*fixed, HEADER_FIXED_BYTES]
    try:
        hlen = peek_header_length(data[: HEADER_FIXED_BYTES + 4096])
    except Exception:
        hlen = HEADER_FIXED_BYTES
    off = HEADER_FIXED_BYTES
    while off + 2 <= hlen - 32:
        lens.append(LengthField(off, 2, "big"))
        n = int.from_bytes(data[off : off + 2], "big")
        bounds += [off, off + 2]
        off += 2 + n
    bounds += [hlen - 32, hlen]
    chunk = 1 << data[17] if data[17] < 40 else 4096
    pos = hlen
    while pos < len(data):
        bounds.append(pos)
        pos += chunk + 16
    return _layout([*fixed, 16, 17, 18, 23], lens, bounds, len(data))


def manifest_layout(data: bytes) -> Layout:
    """Sealed manifest: fixed ``>8sHHIQI4s32s``, then entries (u16 name, ``>BB6sQQ32s``)."""
    fixed = [0, 8, 10, 12, 16, 24, 28, 32, 64]
    lens = [LengthField(8, 2, "big"), LengthField(12, 4, "big"), LengthField(16, 8, "big"),
            LengthField(24, 4, "big")]  # fmt: skip
    bounds = list(fixed)
    count = int.from_bytes(data[24:28], "big")
    off = 64
    # Model id and other texts precede the entries: walk u16-prefixed texts until the count fits.
    offs = list(fixed)
    for _ in range(count + 4):
        if off + 2 > len(data):
            break
        lens.append(LengthField(off, 2, "big"))
        n = int.from_bytes(data[off : off + 2], "big")
        bounds += [off, off + 2, off + 2 + n]
        off += 2 + n
        if off + 56 <= len(data):
            offs += [off, off + 1]
            lens += [LengthField(off + 8, 8, "big"), LengthField(off + 16, 8, "big")]
            bounds += [off + 8, off + 24, off + 56]
            off += 56
    bounds.append(len(data) - 32)
    return _layout(offs, lens, bounds, len(data))


def _pb_layout(data: bytes) -> Layout:
    """Protobuf wire format: tag varints and length prefixes, one level deep."""
    offs: list[int] = []
    lens: list[LengthField] = []
    bounds: list[int] = []
    pos = 0
    while pos < len(data):
        offs.append(pos)
        bounds.append(pos)
        tag, pos2 = _varint(data, pos)
        if pos2 < 0:
            break
        wt = tag & 7
        if wt == 2:
            lens.append(LengthField(pos2, 1, "big"))
            n, pos3 = _varint(data, pos2)
            if pos3 < 0:
                break
            pos = pos3 + n
        elif wt == 0:
            _, pos = _varint(data, pos2)
            if pos < 0:
                break
        elif wt == 1:
            pos = pos2 + 8
        elif wt == 5:
            pos = pos2 + 4
        else:
            break
    return _layout(offs, lens, bounds, len(data))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 70:
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7
    return 0, -1


# --------------------------------------------------------------------------------------------
# Seed families (real vectors first; committed synthetic KATs where no real vector exists)
# --------------------------------------------------------------------------------------------


@cache
def _spdm_seeds() -> tuple[Seed, ...]:
    raw = [
        ("hopper", _unhex_text(NVIDIA / "hopper/hopperAttestationReport.txt")),
        ("hopper_legacy", _unhex_text(NVIDIA / "hopper_legacy/attestationReport.txt")),
        ("blackwell", _unhex_text(NVIDIA / "blackwell/blackwell_coco_report.txt")),
    ]
    for name in ("gpu", "switch"):
        doc = json.loads((NVIDIA / f"ppcie/{name}_evidence.json").read_text())
        raw.append((f"ppcie_{name}0", base64.b64decode(doc[0]["evidence"])))
    return tuple(Seed(label, data, spdm_layout(data)) for label, data in raw)


@cache
def _snp_seeds() -> tuple[Seed, ...]:
    gsg = _read(CPU / "snp/go-sev-guest/attestation.bin")
    virtee = _unhex_text(CPU / "snp/virtee-sev/report_milan.hex")
    return (
        Seed("virtee_milan", virtee, snp_layout(virtee)),
        Seed("gsg_milan", gsg, snp_layout(gsg)),
    )


#: Where each real TDX quote ends inside its file (the files carry trailing test bytes/zeros).
TDX_QUOTE_ENDS = {"dcap-qvl/tdx_quote": 4936, "go-tdx-guest/tdx_prod_quote_SPR_E4.dat": 4935}


@cache
def _tdx_seeds() -> tuple[Seed, ...]:
    out = []
    for rel, label in (
        ("dcap-qvl/tdx_quote", "dcap_v4"),
        ("go-tdx-guest/tdx_prod_quote_SPR_E4.dat", "spr_e4_v4"),
        ("go-tdx-guest/quote_v5_sample.dat", "v5_sample"),
        ("dcap-qvl/tdx_quote_outdated", "outdated_v5"),
    ):
        data = _read(CPU / "tdx" / rel)
        if rel in TDX_QUOTE_ENDS:
            data = data[: TDX_QUOTE_ENDS[rel]]
        out.append(Seed(label, data, tdx_layout(data)))
    return tuple(out)


#: OCSP cases (tests/revocation/pki.py, committed test keys) used as seeds: no public repo ships
#: a real OCSP response for a certificate in our vectors that is still verifiable offline.
OCSP_SEED_CASES = ("good", "delegated", "delegated_ed25519", "nonce", "sha256_cert_id", "revoked")


@cache
def ocsp_cases() -> dict[str, bytes]:
    from tests.revocation.pki import build_cases, load_pki

    return build_cases(load_pki())


@cache
def _ocsp_seeds() -> tuple[Seed, ...]:
    cases = ocsp_cases()
    return tuple(Seed(n, cases[n], der_layout(cases[n])) for n in OCSP_SEED_CASES)


@cache
def _shard_seeds() -> tuple[Seed, ...]:
    d = VECTORS / "sealed/sealed"
    names = ("config.json.sealed", "empty.bin.sealed", "one-chunk.bin.sealed",
             "model-00001-of-00002.safetensors.sealed")  # fmt: skip
    return tuple(Seed(n, _read(d / n), shard_layout(_read(d / n))) for n in names)


@cache
def _manifest_seeds() -> tuple[Seed, ...]:
    data = _read(VECTORS / "sealed/sealed/lessee-manifest.lsm")
    return (Seed("manifest", data, manifest_layout(data)),)


@cache
def stream_vectors() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    req = json.loads((VECTORS / "stream/requests.json").read_text())
    rec = json.loads((VECTORS / "stream/record_layer.json").read_text())
    return req, rec


@cache
def _record_seeds() -> tuple[Seed, ...]:
    _, rec = stream_vectors()
    out = []
    for case in rec:
        n = len(case["records"])
        for seq in sorted({0, 1, 2, 3, n - 1} & set(range(n))):
            data = bytes.fromhex(case["records"][seq])
            out.append(
                Seed(
                    f"{case['name']}#{seq}",
                    data,
                    _layout([0, 1, len(data) - 16], [], [1, len(data) - 16], len(data)),
                )
            )
    return tuple(out)


@cache
def _request_seeds() -> tuple[Seed, ...]:
    req, _ = stream_vectors()
    out = []
    for case in req:
        data = bytes.fromhex(case["request"])
        out.append(
            Seed(case["name"], data, _layout([0, 1, 2, 33, 34], [], [1, 2, 34, 34 + 32], len(data)))
        )
    return tuple(out)


@cache
def stream_key(suite_value: int) -> Any:
    """The committed stream test key of a suite (tests/vectors/generate_stream.py)."""
    from sealing.hpke_suite import SuiteId
    from tests.vectors.generate_stream import fixed_key

    return fixed_key(SuiteId(suite_value))


@cache
def _key_bundle_seeds() -> tuple[Seed, ...]:
    from sealing.hpke_suite import SuiteId
    from sealing.stream.bundle import KeyBundle

    out = []
    for suite in (SuiteId.X25519_SHA256_AES256GCM, SuiteId.MLKEM768_X25519_SHA256_AES256GCM):
        pk = stream_key(int(suite)).public_key
        b = KeyBundle.build(pk, lessee_ear_token().encode(), b"\x01" * 64)
        raw = b.raw
        klen = len(pk.raw)
        o = 4 + 2 + 32
        lens = [LengthField(o, 2, "big"), LengthField(o + 2 + klen, 4, "big"),
                LengthField(o + 2 + klen + 4 + len(b.attestation_result), 4, "big")]  # fmt: skip
        bounds = [4, 5, 6, 38, 40, 40 + klen, 44 + klen, 44 + klen + len(b.attestation_result)]
        out.append(Seed(suite.name.lower(), raw, _layout([0, 4, 5, 6], lens, bounds, len(raw))))
    # Version 2: the same bundle with an evidence document and the session nonce after it.
    pk = stream_key(int(SuiteId.X25519_SHA256_AES256GCM)).public_key
    evidence = b'{"cc_mode_on":true,"devtools_on":false,"gpus":[],"switches":[],"version":1}'
    b = KeyBundle.build(pk, lessee_ear_token().encode(), b"\x01" * 64, evidence=evidence,
                        nonce=bytes(range(32)))  # fmt: skip
    raw = b.raw
    end_v1 = len(raw) - (1 + 32 + 4 + len(evidence))
    lens = [LengthField(o + 2 + len(pk.raw), 4, "big"),
            LengthField(o + 2 + len(pk.raw) + 4 + len(b.attestation_result), 4, "big"),
            LengthField(end_v1, 1, "big"), LengthField(end_v1 + 33, 4, "big")]  # fmt: skip
    bounds = [4, 5, 6, 38, end_v1, end_v1 + 1, end_v1 + 33, end_v1 + 37]
    out.append(Seed("x25519_v2_evidence", raw, _layout([0, 4, 5, 6], lens, bounds, len(raw))))
    return tuple(out)


#: An HPKE key-release blob (``sealing.keyrelease.seal_data_key``) of the public test DEK
#: ``00..1f`` to the committed X25519 stream test key, for model "lessee-test/tiny-model" v7,
#: key id "lsw1-8dd6da411964fa22679caf60806232bc", result id "ear-0001". Committed as bytes
#: because HPKE encapsulation takes no injected randomness; regenerate with
#: ``python -m tests.adversarial.corpus --print-keyrelease``.
KEYRELEASE_BLOB_X25519 = bytes.fromhex(
    "e697cc577205d6c3c7280bf9b7a382cdc65207d5ff84e5c101e8647f6883960df4e359f1b1429bf2b9c1c2b6"
    "f6948864a617ec848d876e025e195beb08090770076cfb0bda291d3299c13e496ef9be08"
)
KEYRELEASE_CONTEXT: dict[str, Any] = {
    "model_id": "lessee-test/tiny-model",
    "model_version": 7,
    "key_id": "lsw1-8dd6da411964fa22679caf60806232bc",
    "result_id": "ear-0001",
}


def _new_keyrelease_blob() -> bytes:
    from sealing.hpke_suite import SuiteId
    from sealing.keyrelease import seal_data_key

    pk = stream_key(int(SuiteId.X25519_SHA256_AES256GCM)).public_key
    return seal_data_key(pk, bytes(range(32)), **KEYRELEASE_CONTEXT)


@cache
def _keyrelease_seeds() -> tuple[Seed, ...]:
    data = KEYRELEASE_BLOB_X25519
    return (
        Seed("x25519_dek", data, _layout([0, 31, 32, 47, 48], [], [32, len(data) - 16], len(data))),
    )


# --- text families ---------------------------------------------------------------------------


RIM_SEED_FILES = (
    "rims/test_no_gpu/Driver_RIM_test_no_gpu.swidtag",
    "rims/test_no_gpu/1010_0200_882_96005E0001_test_no_gpu.swidtag",
    "rims/prod_vbios/1010_0200_882_96005E0001_PROD.swidtag",
)


@cache
def _rim_seeds() -> tuple[Seed, ...]:
    return tuple(Seed(Path(p).stem, _read(NVIDIA / p)) for p in RIM_SEED_FILES)


@cache
def _pem_seeds() -> tuple[Seed, ...]:
    return (
        Seed("hopper", _read(NVIDIA / "hopper/hopperCertChain.txt")),
        Seed("hopper_legacy", _read(NVIDIA / "hopper_legacy/gpuAkCertChain.txt")),
        Seed("blackwell", _read(NVIDIA / "blackwell/blackwell_coco_certs.txt")),
    )


@cache
def _amd_pem_seeds() -> tuple[Seed, ...]:
    return (
        Seed("ask_ark_milan", _read(CPU / "snp/virtee-sev/cert_chain_milan")),
        Seed("ask_ark_genoa", _read(CPU / "snp/go-sev-guest/ask_ark_genoa.pem")),
    )


@cache
def _nv_evidence_json_seeds() -> tuple[Seed, ...]:
    out = []
    for name in ("gpu", "switch"):
        doc = json.loads((NVIDIA / f"ppcie/{name}_evidence.json").read_text())
        # One device keeps each input small; the full 8-GPU file is the first seed.
        out.append(Seed(f"ppcie_{name}_one", json.dumps(doc[:1]).encode()))
    out.insert(0, Seed("ppcie_gpu_all", _read(NVIDIA / "ppcie/gpu_evidence.json")))
    return tuple(out)


@cache
def _tdx_collateral_seeds() -> tuple[Seed, ...]:
    return (Seed("dcap_collateral", _read(CPU / "tdx/dcap-qvl/tdx_quote_collateral.json")),)


@cache
def _pcs_seeds() -> tuple[Seed, ...]:
    g = CPU / "tdx/go-tdx-guest"
    return (
        Seed("tcbinfo", _read(g / "sample_tcbInfo_response")),
        Seed("tcbinfo_v5", _read(g / "sample_tcbinfo_response_v5")),
        Seed("qe_identity", _read(g / "sample_qeIdentity_response")),
    )


#: A policy document in the shape docs/policy.md describes (lessee has no vendor policy vector).
POLICY_SEED = {
    "name": "prod",
    "cpu_tees": ["snp", "tdx"],
    "snp": {"allowed_measurements": ["ab" * 48], "minimum_tcb": {}},
    "tdx": {"allowed_mrtd": ["cd" * 48], "rtmrs": [{"index": 1, "allowed": ["ef" * 48]}]},
    "gpu": {"architectures": ["HOPPER"], "minimum_driver_version": "550.90.07", "count": 8},
    "freshness": {"nonce_ttl_seconds": 120},
    "missing_revocation": "reject",
}


@cache
def _policy_seeds() -> tuple[Seed, ...]:
    return (Seed("prod", json.dumps(POLICY_SEED, indent=1).encode()),)


@cache
def _rp_policy_seeds() -> tuple[Seed, ...]:
    from attest.nvidia.rp_policy import load_nvidia_policy

    out = []
    for p in sorted((NVIDIA / "policies").glob("*.json")):
        data = p.read_bytes()
        try:
            load_nvidia_policy(data)
        except Exception:
            continue
        out.append(Seed(p.stem, data))
    return tuple(out)


@cache
def _bundle_seeds() -> tuple[Seed, ...]:
    from attest.bundle import DeviceEvidenceIn, EvidenceBundle, SnpEvidenceIn, TdxEvidenceIn

    report = _unhex_text(NVIDIA / "hopper/hopperAttestationReport.txt")
    snp = EvidenceBundle(
        cpu=SnpEvidenceIn(
            report=_read(CPU / "snp/go-sev-guest/attestation.bin"),
            certificates=(_read(CPU / "snp/go-sev-guest/vcek.testcer"),),
        ),
        gpus=(DeviceEvidenceIn("HOPPER", report, _read(NVIDIA / "hopper/hopperCertChain.txt")),),
        cc_mode_on=True,
        devtools_on=False,
    )
    tdx = EvidenceBundle(cpu=TdxEvidenceIn(quote=_tdx_seeds()[0].data, collateral_json=b"{}"))
    return (Seed("snp_hopper", snp.to_json()), Seed("tdx", tdx.to_json()))


#: Seed of the committed Ed25519 EAR test key (SHA-256 of a label; guards nothing).
EAR_TEST_KEY_SEED = hashlib.sha256(b"lessee adversarial EAR test key").digest()
#: The verification time of the lessee-issued test EAR (= tests.conftest.TODAY).
EAR_AT_POSIX = 1795824000


@cache
def ear_test_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.from_private_bytes(EAR_TEST_KEY_SEED)


@cache
def lessee_ear_token() -> str:
    """A deterministic lessee EAR (EdDSA) with two submodules, a nonce and an enclave key."""
    from attest.ear import AttestationResult, Status, Submodule, issue_ear

    trust = {"hardware": 2, "executables": 2}
    result = AttestationResult(
        submods={
            "cpu0": Submodule(status=Status.AFFIRMING, trust_vector=trust),
            "gpu0": Submodule(status=Status.AFFIRMING, trust_vector=trust),
        },
        issued_at=EAR_AT_POSIX - 10,
        expires_at=EAR_AT_POSIX + 300,
        verifier_build="lessee adversarial",
        nonce=b"\x07" * 32,
        enclave_key=b"\x02" + b"\x05" * 32,
        result_id="ear-0001",
        policy_digest="sha256:" + "ab" * 32,
    )
    return issue_ear(result, ear_test_key(), kid="adv-test")


@cache
def _ear_seeds() -> tuple[Seed, ...]:
    vec = json.loads((AUDIT / "ear/veraison_ear_jwts.json").read_text())
    return (
        Seed("lessee_eddsa", lessee_ear_token().encode()),
        Seed("veraison_testJWT", vec["testJWT"].encode()),
    )


@cache
def note_seeds_info() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((AUDIT / "real-log-heads/real_log_heads.json").read_text())
    return doc


@cache
def _note_seeds() -> tuple[Seed, ...]:
    from attest.log.checkpoint import format_checkpoint
    from attest.log.note import format_note
    from tests.log.helpers import LOG_SIGNER, WITNESS

    text = format_checkpoint("log.lessee.test/audit", 7, hashlib.sha256(b"root").digest()).text
    signed = format_note(text, [LOG_SIGNER.sign(text)])
    at = 1795824000
    from datetime import UTC, datetime

    cosigned = format_note(
        text, [LOG_SIGNER.sign(text), WITNESS.cosign(text, datetime.fromtimestamp(at, tz=UTC))]
    )
    heads = note_seeds_info()
    return (
        Seed("sumdb", heads["sumdb"]["note"].encode()),
        Seed("static_ct_rome", heads["static_ct_rome"]["note"].encode()),
        Seed("lessee_checkpoint", signed),
        Seed("lessee_cosigned", cosigned),
    )


@cache
def _log_entry_seeds() -> tuple[Seed, ...]:
    from attest.log.entry import RefusalReason
    from tests.log.helpers import make_entry, make_refusal_entry

    # One seed per entry kind and version: attest, release and release_refused (version 1, as
    # older logs hold them, and version 2, naming the model version and manifest).
    return (
        *(Seed(f"entry{i}", make_entry(i)[0].raw) for i in (0, 1)),
        Seed("entry_refused", make_refusal_entry(3, RefusalReason.RESULT_USED)[0].raw),
        Seed("entry_release_v2", make_entry(5, v2=True)[0].raw),
        Seed(
            "entry_refused_v2",
            make_refusal_entry(7, RefusalReason.MANIFEST_PIN, v2=True)[0].raw,
        ),
    )


@cache
def _protobuf_seeds() -> tuple[Seed, ...]:
    from agent.rpc.v1 import broker_pb2, enclave_pb2, evidence_pb2, log_pb2

    snp = _snp_seeds()[0].data
    gpu = _spdm_seeds()[0].data
    chain = _pem_seeds()[0].data
    msgs: list[tuple[str, Any]] = []
    for mod in (broker_pb2, enclave_pb2, evidence_pb2, log_pb2):
        for name, desc in sorted(mod.DESCRIPTOR.message_types_by_name.items()):
            cls = getattr(mod, name)
            msg = cls()
            _fill(msg, desc, {"snp": snp, "gpu": gpu, "chain": chain}, depth=0)
            msgs.append((f"{mod.__name__.rsplit('.', 1)[1]}.{name}", msg))
    out = []
    for label, msg in msgs:
        data = msg.SerializeToString(deterministic=True)
        out.append(Seed(label, data, _pb_layout(data)))
    return tuple(out)


#: String fields whose contract is narrower than "any text" get a valid value.
_PB_STRINGS = {
    "arch": "HOPPER",
    "model_id": "lessee-test/tiny-model",
    # An EAR's shape (compact JWS: three base64url segments); its signature is not checked here.
    "result": "eyJhbGciOiJFUzI1NiJ9.eyJ4IjoxfQ.AAAA",
}


def _fill(msg: Any, desc: Any, blobs: dict[str, bytes], depth: int) -> None:
    """Set every field of a message from the real vectors (bytes) or small fixed values."""
    from google.protobuf.descriptor import FieldDescriptor as F

    for f in desc.fields:
        if f.containing_oneof is not None and f.containing_oneof.fields[0] is not f:
            continue
        repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == F.LABEL_REPEATED
        if f.type == F.TYPE_MESSAGE:
            if depth > 3 or f.message_type.GetOptions().map_entry:
                continue
            sub = getattr(msg, f.name).add() if repeated else getattr(msg, f.name)
            _fill(sub, f.message_type, blobs, depth + 1)
            if not repeated:
                getattr(msg, f.name).SetInParent()
            continue
        if f.type == F.TYPE_BYTES:
            n = f.name.lower()
            value: Any = (
                blobs["snp"]
                if "report" in n or "quote" in n
                else blobs["gpu"]
                if "evidence" in n
                else blobs["chain"]
                if "cert" in n or "chain" in n
                else hashlib.sha256(f.name.encode()).digest()
            )
        elif f.type == F.TYPE_STRING:
            value = _PB_STRINGS.get(f.name, f"adv-{f.name}")
        elif f.type == F.TYPE_BOOL:
            value = True
        elif f.type == F.TYPE_ENUM:
            value = f.enum_type.values[-1].number
        elif f.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            value = 1.5
        else:
            value = {"tree_size": 8, "size2": 8}.get(f.name, 7)
        if repeated:
            getattr(msg, f.name).append(value)
        else:
            setattr(msg, f.name, value)


@cache
def _audit_entries_seeds() -> tuple[Seed, ...]:
    """An audit bundle's entries.bin (agent/audit/bundle.py framing: ``>Q32sI`` + entry)."""
    from agent.audit.bundle import encode_record
    from attest.log.merkle import leaf_hash
    from tests.log.helpers import make_entry

    raws = [make_entry(i)[0].raw for i in range(3)]
    data = b"".join(encode_record(i, leaf_hash(r), r) for i, r in enumerate(raws))
    offs, lens, bounds, off = [], [], [], 0
    for r in raws:
        offs += [off, off + 7]
        lens += [LengthField(off, 8, "big"), LengthField(off + 40, 4, "big")]
        bounds += [off, off + 8, off + 40, off + 44]
        off += 44 + len(r)
    return (Seed("entries3", data, _layout(offs, lens, bounds, len(data))),)


def log_proof_seed(index: int, size: int) -> bytes:
    """A key bundle's log proof (``attest.log.entryproof``): entry ``index`` of ``size`` test
    entries (tests/log/helpers.py), its inclusion proof and a checkpoint signed by the committed
    test log key."""
    from attest.log.checkpoint import format_checkpoint
    from attest.log.entryproof import EntryProof
    from attest.log.merkle import MerkleTree, leaf_hash
    from attest.log.note import format_note
    from tests.log.helpers import LOG_SIGNER, make_entry

    raws = [make_entry(i)[0].raw for i in range(size)]
    tree = MerkleTree([leaf_hash(r) for r in raws])
    text = format_checkpoint(LOG_SIGNER.name, size, tree.root()).text
    note = format_note(text, [LOG_SIGNER.sign(text)])
    hashes = tuple(tree.inclusion_proof(index))
    return EntryProof(index, size, hashes, raws[index], note).encode()


@cache
def _log_proof_seeds() -> tuple[Seed, ...]:
    out = []
    for index, size in ((2, 5), (0, 1)):
        data = log_proof_seed(index, size)
        count = data[21]
        e = 22 + 32 * count
        entry_len = int.from_bytes(data[e : e + 4], "big")
        c = e + 4 + entry_len
        lens = [LengthField(5, 8, "big"), LengthField(13, 8, "big"), LengthField(21, 1, "big"),
                LengthField(e, 4, "big"), LengthField(c, 4, "big")]  # fmt: skip
        bounds = [4, 5, 13, 21, 22, *range(54, e, 32), e, e + 4, c, c + 4]
        out.append(
            Seed(
                f"entry{index}_of_{size}", data, _layout([0, 4, 5, 13, 21], lens, bounds, len(data))
            )
        )
    return tuple(out)


#: family -> (format, seed loader). Formats pick the mutation operators.
FAMILIES: dict[str, tuple[str, Callable[[], tuple[Seed, ...]]]] = {
    "spdm": ("binary", _spdm_seeds),
    "snp": ("binary", _snp_seeds),
    "tdx_quote": ("binary", _tdx_seeds),
    "ocsp": ("binary", _ocsp_seeds),
    "sealed_shard": ("binary", _shard_seeds),
    "sealed_manifest": ("binary", _manifest_seeds),
    "stream_record": ("binary", _record_seeds),
    "stream_request": ("binary", _request_seeds),
    "key_bundle": ("binary", _key_bundle_seeds),
    "log_proof": ("binary", _log_proof_seeds),
    "keyrelease": ("binary", _keyrelease_seeds),
    "protobuf": ("binary", _protobuf_seeds),
    "audit_entries": ("binary", _audit_entries_seeds),
    "rim": ("xml", _rim_seeds),
    "pem_chain": ("pem", _pem_seeds),
    "amd_pem": ("pem", _amd_pem_seeds),
    "nv_evidence_json": ("json", _nv_evidence_json_seeds),
    "tdx_collateral": ("json", _tdx_collateral_seeds),
    "pcs_response": ("json", _pcs_seeds),
    "policy": ("json", _policy_seeds),
    "rp_policy": ("json", _rp_policy_seeds),
    "bundle": ("json", _bundle_seeds),
    "log_entry": ("json", _log_entry_seeds),
    "ear": ("jwt", _ear_seeds),
    "note": ("note", _note_seeds),
}


def seeds(family: str) -> tuple[Seed, ...]:
    return FAMILIES[family][1]()


# --------------------------------------------------------------------------------------------
# Binary operators
# --------------------------------------------------------------------------------------------

Op = Callable[[random.Random, Seed, Sequence[Seed]], tuple[str, str, bytes] | None]


def _pick_offset(rng: random.Random, s: Seed) -> int:
    if s.layout.offsets and rng.random() < 0.7:
        return rng.choice(s.layout.offsets)
    return rng.randrange(len(s.data))


def _pick_bound(rng: random.Random, s: Seed) -> int:
    if s.layout.boundaries and rng.random() < 0.8:
        return rng.choice(s.layout.boundaries) + rng.choice((0, 0, 0, -1, 1))
    return rng.randrange(1, max(2, len(s.data)))


def op_flip(rng: random.Random, s: Seed, _: Sequence[Seed]) -> tuple[str, str, bytes] | None:
    i, bit = rng.randrange(len(s.data)), rng.randrange(8)
    b = bytearray(s.data)
    b[i] ^= 1 << bit
    return f"flip@{i}.{bit}", "tamper", bytes(b)


def op_byte(rng: random.Random, s: Seed, _: Sequence[Seed]) -> tuple[str, str, bytes] | None:
    i = _pick_offset(rng, s)
    b = bytearray(s.data)
    v = rng.choice((*HOSTILE_BYTES, b[i] ^ 0xFF, (b[i] + 1) & 0xFF, (b[i] - 1) & 0xFF))
    b[i] = v
    return f"byte@{i}={v:02x}", "tamper", bytes(b)


def op_length(rng: random.Random, s: Seed, _: Sequence[Seed]) -> tuple[str, str, bytes] | None:
    if not s.layout.lengths:
        return op_byte(rng, s, ())
    f = rng.choice(s.layout.lengths)
    order: Literal["little", "big"] = "little" if f.order == "little" else "big"
    cur = int.from_bytes(s.data[f.offset : f.offset + f.width], order)
    top = (1 << (8 * f.width)) - 1
    v = rng.choice((0, 1, top, top - 1, top >> 1, cur + 1, cur - 1, cur * 2, cur + 4096))
    v = max(0, min(top, v))
    b = bytearray(s.data)
    b[f.offset : f.offset + f.width] = v.to_bytes(f.width, order)
    return f"len@{f.offset}w{f.width}={v}", "tamper", bytes(b)


def op_truncate(rng: random.Random, s: Seed, _: Sequence[Seed]) -> tuple[str, str, bytes] | None:
    n = _pick_bound(rng, s)
    if rng.random() < 0.1:
        n = rng.choice((0, 1, 2, 3, 4, 8))
    n = max(0, min(len(s.data) - 1, n))
    return f"trunc@{n}", "truncate", s.data[:n]


def op_extend(rng: random.Random, s: Seed, _: Sequence[Seed]) -> tuple[str, str, bytes] | None:
    choice = rng.randrange(5)
    tail = (
        b"\x00",
        b"\x01",
        rng.randbytes(rng.randrange(1, 64)),
        s.data[: rng.randrange(1, min(len(s.data), 256) + 1)],
        bytes(4096),
    )[choice]
    return f"extend+{len(tail)}", "trailing", s.data + tail


def op_span(rng: random.Random, s: Seed, _: Sequence[Seed]) -> tuple[str, str, bytes] | None:
    bounds = sorted({0, *s.layout.boundaries, len(s.data)})
    if len(bounds) < 3:
        bounds = sorted({0, *(rng.randrange(len(s.data)) for _ in range(4)), len(s.data)})
    k = rng.randrange(len(bounds) - 1)
    a, b = bounds[k], bounds[k + 1]
    if a == b:
        return None
    d = s.data
    mode = rng.randrange(4)
    if mode == 0:
        return f"dup[{a}:{b}]", "tamper", d[:b] + d[a:b] + d[b:]
    if mode == 1:
        return f"drop[{a}:{b}]", "tamper", d[:a] + d[b:]
    if mode == 2 and k + 2 < len(bounds):
        c = bounds[k + 2]
        return f"swap[{a}:{b}:{c}]", "tamper", d[:a] + d[b:c] + d[a:b] + d[c:]
    fill = rng.choice((0x00, 0xFF))
    return f"fill[{a}:{b}]={fill:02x}", "tamper", d[:a] + bytes([fill]) * (b - a) + d[b:]


def op_splice(
    rng: random.Random, s: Seed, all_seeds: Sequence[Seed]
) -> tuple[str, str, bytes] | None:
    others = [o for o in all_seeds if o.label != s.label]
    if not others:
        return None
    o = rng.choice(others)
    cut = _pick_bound(rng, s)
    cut = max(1, min(cut, len(s.data) - 1, len(o.data) - 1))
    return f"splice({o.label})@{cut}", "tamper", s.data[:cut] + o.data[cut:]


def op_random(rng: random.Random, s: Seed, _: Sequence[Seed]) -> tuple[str, str, bytes] | None:
    n = rng.choice((len(s.data), rng.randrange(0, 64), rng.randrange(0, len(s.data) + 1)))
    if rng.random() < 0.5 and n >= 4:
        # Keep the seed's first bytes (magic, version) so the parser gets past its first check.
        keep = min(n, rng.choice((1, 2, 4, 8, 16)))
        return f"random{n}+head{keep}", "tamper", s.data[:keep] + rng.randbytes(n - keep)
    return f"random{n}", "tamper", rng.randbytes(n)


def op_multi(
    rng: random.Random, s: Seed, all_seeds: Sequence[Seed]
) -> tuple[str, str, bytes] | None:
    """Two to four stacked byte-level edits: reaches states no single edit reaches."""
    cur = s
    names = []
    for _ in range(rng.randrange(2, 5)):
        out = rng.choice((op_flip, op_byte, op_length))(rng, cur, all_seeds)
        if out is None:
            continue
        names.append(out[0])
        cur = Seed(s.label, out[2], s.layout)
    return "+".join(names), "tamper", cur.data


BINARY_OPS: tuple[Op, ...] = (
    op_flip, op_byte, op_length, op_truncate, op_extend, op_span, op_splice, op_random, op_multi,
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# XML (RIM) operators
# --------------------------------------------------------------------------------------------

_XML_DECL_RE = re.compile(rb"^<\?xml[^>]*\?>\s*")
_ROOT_RE = re.compile(rb"<([A-Za-z_][\w.:-]*)[\s>]")


def _split_decl(data: bytes) -> tuple[bytes, bytes]:
    m = _XML_DECL_RE.match(data)
    return (data[: m.end()], data[m.end() :]) if m else (b"", data)


def _root_name(body: bytes) -> bytes:
    m = _ROOT_RE.search(body)
    return m.group(1) if m else b"SoftwareIdentity"


def _inject_text(body: bytes, ref: bytes) -> bytes:
    """Put ``ref`` (an entity reference) inside the first Meta/Entity attribute value."""
    m = re.search(rb'(colloquialVersion|name)="([^"]*)"', body)
    if not m:
        return body + ref
    return body[: m.start(2)] + ref + body[m.start(2) :]


def xml_attacks(s: Seed) -> Iterator[tuple[str, bytes]]:
    decl, body = _split_decl(s.data)
    root = _root_name(body)
    dt = b"<!DOCTYPE " + root + b" "
    yield (
        "xxe-file",
        decl + dt + b'[<!ENTITY x SYSTEM "file:///etc/passwd">]>' + _inject_text(body, b"&x;"),
    )
    yield (
        "xxe-http",
        decl + dt + b'[<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]>' + _inject_text(body, b"&x;"),
    )
    laughs = b"".join(
        b'<!ENTITY l%d "%s">' % (i, (b"&l%d;" % (i - 1)) * 10 if i else b"lol") for i in range(10)
    )
    yield "billion-laughs", decl + dt + b"[" + laughs + b"]>" + _inject_text(body, b"&l9;")
    big = b"A" * 50_000
    yield (
        "quadratic-blowup",
        decl + dt + b'[<!ENTITY a "' + big + b'">]>' + _inject_text(body, b"&a;" * 2000),
    )
    yield (
        "internal-entity",
        decl + dt + b'[<!ENTITY v "99.99.99.99.99">]>' + _inject_text(body, b"&v;"),
    )
    yield "external-dtd", decl + dt + b'SYSTEM "http://127.0.0.1:9/evil.dtd">' + body
    yield "external-dtd-file", decl + dt + b'SYSTEM "file:///etc/passwd">' + body
    yield (
        "parameter-entity",
        decl + dt + b'[<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]>' + body,
    )
    yield "empty-doctype", decl + dt + b"[]>" + body
    yield (
        "xinclude",
        _insert_after_root_open(
            decl + body,
            b'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd" parse="text"/>',
        ),
    )
    yield "processing-instruction", _insert_after_root_open(decl + body, b"<?evil data?>")
    yield (
        "xml-stylesheet",
        decl + b'<?xml-stylesheet type="text/xsl" href="http://127.0.0.1:9/x.xsl"?>' + body,
    )
    yield (
        "utf16",
        ('<?xml version="1.0" encoding="UTF-16"?>' + body.decode("utf-8")).encode("utf-16"),
    )
    yield "bom-utf8", b"\xef\xbb\xbf" + decl + body
    yield "decl-encoding-lie", b'<?xml version="1.0" encoding="ISO-8859-1"?>' + body
    yield "second-root", decl + body + b"<" + root + b"/>"
    yield "trailing-comment", decl + body + b"<!-- trailing -->"
    # Signature wrapping: a forged copy of the measured content beside the signed one.
    yield from _wrapping(decl, body)
    # Content edits the signature must catch.
    for i, hm in enumerate(re.finditer(rb'Hash0="([0-9a-fA-F])', body)):
        if i >= 3:
            break
        c = b"0" if hm.group(1) != b"0" else b"1"
        yield f"hash0-digit-{i}", decl + body[: hm.start(1)] + c + body[hm.start(1) + 1 :]
    m: re.Match[bytes] | None = re.search(rb'active="(True|False|true|false)"', body)
    if m:
        flip = b"False" if m.group(1).lower() == b"true" else b"True"
        yield "active-toggle", decl + body[: m.start(1)] + flip + body[m.end(1) :]
    m = re.search(rb'colloquialVersion="([^"]*)"', body)
    if m:
        yield "version-edit", decl + body[: m.start(1)] + b"999.99" + body[m.end(1) :]
    m = re.search(rb'(Hash0="[0-9a-fA-F]{8})', body)
    if m:
        yield "comment-in-hash", decl + body[: m.end(1)] + b"<!---->" + body[m.end(1) :]
    m = re.search(rb"<(\w+:)?DigestValue>([^<]{8})", body)
    if m:
        yield "comment-in-digest", decl + body[: m.end(2)] + b"<!---->" + body[m.end(2) :]
        yield (
            "cdata-in-digest",
            decl
            + body[: m.start(2)]
            + b"<![CDATA["
            + body[m.start(2) : m.end(2)]
            + b"]]>"
            + body[m.end(2) :],
        )
    m = re.search(rb"<(\w+:)?SignatureValue>", body)
    if m:
        end = body.find(b"<", m.end())
        if end > m.end() + 8:
            yield "signature-value-empty", decl + body[: m.end()] + body[end:]
    m = re.search(rb'URI="([^"]*)"', body)
    if m:
        yield "reference-uri-id", decl + body[: m.start(1)] + b"#forged" + body[m.end(1) :]
    m = re.search(rb"<(\w+:)?X509Certificate>", body)
    if m:
        yield "x509-cert-garbage", decl + body[: m.end()] + b"AAAA" + body[m.end() :]


def _insert_after_root_open(doc: bytes, fragment: bytes) -> bytes:
    decl, body = _split_decl(doc)
    m = re.search(rb"<[A-Za-z_][^>]*>", body)
    if not m:
        return doc + fragment
    return decl + body[: m.end()] + fragment + body[m.end() :]


def _wrapping(decl: bytes, body: bytes) -> Iterator[tuple[str, bytes]]:
    payload = re.search(rb"<(\w+:)?Payload[\s>].*?</(\w+:)?Payload>", body, re.S)
    signature = re.search(rb"<(\w+:)?Signature[\s>].*?</(\w+:)?Signature>", body, re.S)
    if payload:
        p = payload.group(0)
        forged = re.sub(rb'Hash0="[0-9a-fA-F]', b'Hash0="f', p, count=0)
        yield (
            "wrap-forged-payload-first",
            decl + body[: payload.start()] + forged + p + body[payload.end() :],
        )
        yield (
            "wrap-forged-payload-after",
            decl + body[: payload.end()] + forged + body[payload.end() :],
        )
        yield "wrap-payload-removed", decl + body[: payload.start()] + body[payload.end() :]
        if signature:
            sig = signature.group(0)
            close = re.search(rb"</(\w+:)?Signature>$", sig)
            if close:
                prefix = close.group(1) or b""
                obj = b"<" + prefix + b"Object>" + p + b"</" + prefix + b"Object>"
                moved = sig[: close.start()] + obj + sig[close.start() :]
                rest = body[: payload.start()] + forged + body[payload.end() :]
                rest = rest.replace(sig, moved, 1)
                yield "wrap-signed-into-object", decl + rest
    if signature:
        sig = signature.group(0)
        yield (
            "wrap-second-signature",
            decl + body[: signature.end()] + sig + body[signature.end() :],
        )
        yield "wrap-signature-removed", decl + body[: signature.start()] + body[signature.end() :]
        yield (
            "wrap-signature-first",
            _insert_after_root_open(
                decl + body[: signature.start()] + body[signature.end() :], sig
            ),
        )


def xml_ops(
    rng: random.Random, s: Seed, all_seeds: Sequence[Seed]
) -> Iterator[tuple[str, str, bytes]]:
    for name, data in xml_attacks(s):
        yield name, "tamper", data
    while True:
        op = rng.choice((op_flip, op_byte, op_truncate, op_extend_text, op_splice, op_multi))
        out = op(rng, s, all_seeds)
        if out is not None:
            yield out


def op_extend_text(rng: random.Random, s: Seed, _: Sequence[Seed]) -> tuple[str, str, bytes] | None:
    tail = rng.choice((b"x", b"<x/>", b"\x00", b"{}", b"garbage" * 8, b"\xff\xfe"))
    return f"extend-text+{len(tail)}", "trailing", s.data + tail


# --------------------------------------------------------------------------------------------
# JSON operators
# --------------------------------------------------------------------------------------------


class _Raw(str):
    """Text emitted verbatim by :func:`_encode` (hostile number literals, nesting)."""


_DUP = object()


def _encode(
    obj: Any, path: tuple[Any, ...] = (), dup: tuple[Any, ...] | None = None, dup_value: Any = None
) -> str:
    if isinstance(obj, _Raw):
        return str(obj)
    if isinstance(obj, dict):
        parts = []
        for k, v in obj.items():
            if dup is not None and (*path, k) == dup:
                parts.append(json.dumps(k) + ":" + _encode(dup_value))
            parts.append(json.dumps(k) + ":" + _encode(v, (*path, k), dup, dup_value))
        return "{" + ",".join(parts) + "}"
    if isinstance(obj, list):
        return (
            "[" + ",".join(_encode(v, (*path, i), dup, dup_value) for i, v in enumerate(obj)) + "]"
        )
    return json.dumps(obj)


def _paths(obj: Any, prefix: tuple[Any, ...] = (), limit: int = 3000) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    stack = [(prefix, obj)]
    while stack and len(out) < limit:
        p, o = stack.pop()
        if p:
            out.append(p)
        if isinstance(o, dict):
            stack.extend(((*p, k), v) for k, v in o.items())
        elif isinstance(o, list):
            stack.extend(((*p, i), v) for i, v in enumerate(o))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        new = dict(obj)
        new[head] = _set(obj[head], rest, value)
        return new
    new_l = list(obj)
    new_l[head] = _set(obj[head], rest, value)
    return new_l


def _delete(obj: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        if isinstance(obj, dict):
            return {k: v for k, v in obj.items() if k != path[0]}
        return [v for i, v in enumerate(obj) if i != path[0]]
    head = path[0]
    if isinstance(obj, dict):
        new = dict(obj)
        new[head] = _delete(obj[head], path[1:])
        return new
    new_l = list(obj)
    new_l[head] = _delete(obj[head], path[1:])
    return new_l


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


HOSTILE_JSON_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 2**64, -(2**63) - 1, "", [], {}, "A" * 1000,
    _Raw("1e999"), _Raw("-1e999"), _Raw("NaN"), _Raw("Infinity"), _Raw("-Infinity"), _Raw("-0"),
    _Raw("1.5"), _Raw("1" * 5000), _Raw('"\\ud800"'), _Raw('"\\u0000"'), _Raw('"\\uFEFFa"'),
    "../../../etc/passwd", "%s%s%n", "\u202e", "1970-01-01T00:00:00Z",
)  # fmt: skip


def json_ops(
    rng: random.Random, s: Seed, all_seeds: Sequence[Seed]
) -> Iterator[tuple[str, str, bytes]]:
    try:
        doc = json.loads(s.data)
    except ValueError:
        doc = None
    text = s.data
    fixed: list[tuple[str, str, bytes]] = [
        ("deep-array", "tamper", b"[" * DEEP_NESTING + b"]" * DEEP_NESTING),
        ("deep-object", "tamper", b'{"a":' * DEEP_NESTING + b"1" + b"}" * DEEP_NESTING),
        ("deep-unclosed", "tamper", b"[" * DEEP_NESTING),
        ("huge-number", "tamper", b"1" * HUGE_TEXT),
        ("huge-string", "tamper", b'"' + b"A" * HUGE_TEXT + b'"'),
        ("nan", "tamper", b"NaN"),
        ("null", "tamper", b"null"),
        ("empty", "truncate", b""),
        ("bom", "tamper", b"\xef\xbb\xbf" + text),
        ("utf16", "tamper", text.decode("utf-8", "replace").encode("utf-16")),
        ("invalid-utf8", "tamper", text[:1] + b"\xff\xfe" + text[1:]),
        ("trailing-garbage", "trailing", text + b"x"),
        ("trailing-second-doc", "trailing", text + b"{}"),
        ("wrapped-in-list", "tamper", b"[" + text + b"]"),
        ("wrapped-twice", "tamper", b"[" + text + b"," + text + b"]"),
    ]
    yield from fixed
    if doc is None:
        yield from (op(rng, s, all_seeds) or ("noop", "tamper", s.data) for op in [op_flip] * 10**9)
        return
    paths = _paths(doc)
    dict_paths = [p for p in paths if isinstance(_get(doc, p), dict)] + [()] * isinstance(doc, dict)
    while True:
        k = rng.randrange(9)
        if k <= 2 and paths:
            p = rng.choice(paths)
            v = rng.choice(HOSTILE_JSON_VALUES)
            yield f"json-type{_pstr(p)}={_vname(v)}", "tamper", _encode(_set(doc, p, v)).encode()
        elif k == 3 and paths:
            p = rng.choice(paths)
            yield f"json-drop{_pstr(p)}", "tamper", _encode(_delete(doc, p)).encode()
        elif k == 4 and dict_paths:
            p = rng.choice(dict_paths)
            keys = list(_get(doc, p).keys()) if p else list(doc.keys())
            if keys:
                key = rng.choice(keys)
                old = _get(doc, (*p, key))
                alt = rng.choice((*HOSTILE_JSON_VALUES, old))
                yield (
                    f"json-dupkey{_pstr((*p, key))}",
                    "tamper",
                    _encode(doc, (), (*p, key), alt).encode(),
                )
        elif k == 5 and dict_paths:
            p = rng.choice(dict_paths)
            target = _get(doc, p) if p else doc
            new = dict(target)
            new[rng.choice(("x-unknown", "__proto__", "constructor", "alg", ""))] = 1
            yield (
                f"json-addkey{_pstr(p)}",
                "tamper",
                _encode(_set(doc, p, new) if p else new).encode(),
            )
        elif k == 6 and paths:
            p = rng.choice(paths)
            deep = _Raw("[" * 5000 + "]" * 5000)
            yield f"json-deep{_pstr(p)}", "tamper", _encode(_set(doc, p, deep)).encode()
        elif k == 7:
            out = rng.choice((op_flip, op_truncate, op_splice, op_byte))(rng, s, all_seeds)
            if out is not None:
                yield out
        else:
            # A string leaf edited in place: one character changed (hex digit, base64, date).
            str_paths = [p for p in paths if isinstance(_get(doc, p), str) and _get(doc, p)]
            if str_paths:
                p = rng.choice(str_paths)
                v = _get(doc, p)
                i = rng.randrange(len(v))
                c = "0" if v[i] != "0" else "1"
                yield (
                    f"json-char{_pstr(p)}@{i}",
                    "tamper",
                    _encode(_set(doc, p, v[:i] + c + v[i + 1 :])).encode(),
                )


def _pstr(p: tuple[Any, ...]) -> str:
    return "".join(f"[{x}]" for x in p)[:24]


def _vname(v: Any) -> str:
    r = repr(v)
    return r[:12]


# --------------------------------------------------------------------------------------------
# PEM operators
# --------------------------------------------------------------------------------------------

_PEM_BLOCK_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\r?\n?", re.S)


def pem_ops(
    rng: random.Random, s: Seed, all_seeds: Sequence[Seed]
) -> Iterator[tuple[str, str, bytes]]:
    blocks = _PEM_BLOCK_RE.findall(s.data)
    other = [b for o in all_seeds if o.label != s.label for b in _PEM_BLOCK_RE.findall(o.data)]
    j = b"".join
    fixed: list[tuple[str, bytes]] = [
        ("many-certs-11", j(blocks) * (11 // max(1, len(blocks)) + 1)),
        ("many-certs-1000", j(blocks[:1]) * 1000),
        ("garbage-between", b"garbage\n".join(blocks)),
        ("nul-between", b"\x00".join(blocks)),
        ("reversed", j(reversed(blocks))),
        ("duplicate-leaf", j(blocks[:1] + blocks)),
        ("duplicate-root", j(blocks + blocks[-1:])),
        ("crlf", s.data.replace(b"\n", b"\r\n")),
        (
            "label-mismatch",
            s.data.replace(b"-----END CERTIFICATE-----", b"-----END X509 CRL-----", 1),
        ),
        ("begin-only", s.data.replace(b"-----END CERTIFICATE-----", b"", 1)),
        (
            "nested-begin",
            s.data.replace(
                b"-----BEGIN CERTIFICATE-----\n",
                b"-----BEGIN CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n",
                1,
            ),
        ),
        (
            "private-key-block",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" + s.data,
        ),
        ("empty", b""),
        ("huge-line", blocks[0].replace(b"\n", b"", 3) if blocks else s.data),
        (
            "headers",
            s.data.replace(
                b"-----BEGIN CERTIFICATE-----\n",
                b"-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n\n",
                1,
            ),
        ),
    ]
    for i in range(len(blocks)):
        fixed.append((f"drop-cert-{i}", j(blocks[:i] + blocks[i + 1 :])))
        if i + 1 < len(blocks):
            fixed.append(
                (f"swap-cert-{i}", j([*blocks[:i], blocks[i + 1], blocks[i], *blocks[i + 2 :]]))
            )
        if other:
            fixed.append(
                (f"foreign-cert-{i}", j([*blocks[:i], other[i % len(other)], *blocks[i + 1 :]]))
            )
    for i, block in enumerate(blocks):
        for tag in (0x03, 0x1E, 0x04, 0x17):
            edited = _retag_name_string(block, tag)
            if edited is not None:
                fixed.append(
                    (f"name-tag-{tag:02x}-cert-{i}", j([*blocks[:i], edited, *blocks[i + 1 :]]))
                )
    for name, data in fixed:
        if data != s.data:
            yield name, "tamper", data
    b64_positions = [m.start() for m in re.finditer(rb"[A-Za-z0-9+/]", s.data)]
    while True:
        k = rng.randrange(4)
        if k == 0 and b64_positions:
            i = rng.choice(b64_positions)
            c = rng.choice(b"ABCDEFGHabcdefgh0123+/=*!")
            if c != s.data[i]:
                yield f"b64@{i}={chr(c)}", "tamper", s.data[:i] + bytes([c]) + s.data[i + 1 :]
        else:
            out = rng.choice((op_flip, op_truncate, op_splice, op_extend_text))(rng, s, all_seeds)
            if out is not None:
                yield out


#: DER of an X.520 attribute type OID prefix (2.5.4.x): the next byte is the attribute, then the
#: string tag of its value. Re-tagging a name's string (PrintableString -> BIT STRING, BMPString,
#: OCTET STRING, UTCTime) keeps every length valid, so only the name decoder can object.
_X520_PREFIX = bytes.fromhex("060355 04".replace(" ", ""))


def _retag_name_string(block: bytes, tag: int) -> bytes | None:
    m = re.match(
        rb"(-----BEGIN CERTIFICATE-----\r?\n?)(.*?)(-----END CERTIFICATE-----\r?\n?)", block, re.S
    )
    if not m:
        return None
    der = bytearray(base64.b64decode(b"".join(m.group(2).split())))
    i = der.find(_X520_PREFIX)
    if i < 0 or i + 5 >= len(der) or der[i + 5] == tag:
        return None
    der[i + 5] = tag
    body = base64.encodebytes(bytes(der))
    return m.group(1) + body + m.group(3)


# --------------------------------------------------------------------------------------------
# JWT operators
# --------------------------------------------------------------------------------------------


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


#: Attacker keys (SHA-256 of labels): they sign forged tokens the verifier must refuse.
ATTACKER_ED25519_SEED = hashlib.sha256(b"lessee adversarial attacker ed25519").digest()
ATTACKER_P256_SCALAR = int.from_bytes(
    hashlib.sha256(b"lessee adversarial attacker p256").digest(), "big"
) % (2**255)


def jwt_attacks(s: Seed) -> Iterator[tuple[str, bytes]]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    token = s.data.decode()
    h64, p64, sig64 = token.split(".")
    header = json.loads(_unb64u(h64))
    claims = json.loads(_unb64u(p64))
    forged = dict(claims)
    forged["iat"] = int(claims.get("iat", 0)) + 1
    forged_p = _b64u(json.dumps(forged).encode())

    def tok(h: dict[str, Any], p: str, sig: bytes | str) -> bytes:
        hs = _b64u(json.dumps(h).encode())
        ss = sig if isinstance(sig, str) else _b64u(sig)
        return f"{hs}.{p}.{ss}".encode()

    yield "alg-none", tok({"alg": "none", "typ": "JWT"}, p64, b"")
    yield "alg-none-caps", tok({"alg": "None"}, forged_p, b"")
    yield "alg-none-keep-sig", tok({"alg": "none"}, p64, sig64)
    pub = ear_test_key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    for name, secret in (("raw", pub), ("b64", _b64u(pub).encode()), ("empty", b"")):
        h: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
        hs = _b64u(json.dumps(h).encode())
        mac = hmac.new(secret, f"{hs}.{p64}".encode(), hashlib.sha256).digest()
        yield f"hs256-{name}", f"{hs}.{p64}.{_b64u(mac)}".encode()
    attacker = ed25519.Ed25519PrivateKey.from_private_bytes(ATTACKER_ED25519_SEED)
    apub = attacker.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    headers: tuple[tuple[str, dict[str, Any]], ...] = (
        ("jwk-header", {"alg": "EdDSA", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": _b64u(apub)}}),
        ("kid-injection", {"alg": "EdDSA", "kid": "../../../dev/null"}),
        ("jku-header", {"alg": "EdDSA", "jku": "http://127.0.0.1:9/jwks.json"}),
        ("x5u-header", {"alg": "EdDSA", "x5u": "http://127.0.0.1:9/x.pem"}),
        ("crit-b64", {"alg": "EdDSA", "crit": ["b64"], "b64": False}),
        ("attacker-same-header", dict(header) | {"alg": "EdDSA"}),
    )
    for name, h in headers:
        hs = _b64u(json.dumps(h).encode())
        sig = attacker.sign(f"{hs}.{forged_p}".encode())
        yield name, f"{hs}.{forged_p}.{_b64u(sig)}".encode()
    ec_attacker = ec.derive_private_key(ATTACKER_P256_SCALAR + 1, ec.SECP256R1())
    nums = ec_attacker.public_key().public_numbers()
    h = {
        "alg": "ES256",
        "jwk": {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64u(nums.x.to_bytes(32, "big")),
            "y": _b64u(nums.y.to_bytes(32, "big")),
        },
    }
    hs = _b64u(json.dumps(h).encode())
    from cryptography.hazmat.primitives import hashes

    der = ec_attacker.sign(
        f"{hs}.{forged_p}".encode(), ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    )
    yield "es256-jwk-der-sig", f"{hs}.{forged_p}.{_b64u(der)}".encode()
    yield "payload-swapped", f"{h64}.{forged_p}.{sig64}".encode()
    yield "sig-empty", f"{h64}.{p64}.".encode()
    yield "sig-truncated", f"{h64}.{p64}.{sig64[:-4]}".encode()
    yield "sig-padded", f"{h64}.{p64}.{sig64}==".encode()
    yield "extra-segment", f"{h64}.{p64}.{sig64}.{sig64}".encode()
    yield "jwe-shape", f"{h64}.{p64}.{sig64}.AAAA.BBBB".encode()
    yield "two-segments", f"{h64}.{p64}".encode()
    dup_alg = _b64u(b'{"alg":"EdDSA","alg":"none"}')
    yield "header-dup-alg", f"{dup_alg}.{p64}.{sig64}".encode()
    yield "header-std-b64", f"{base64.b64encode(_unb64u(h64)).decode()}.{p64}.{sig64}".encode()
    yield "huge-token", ("A" * 300_000 + "." + p64 + "." + sig64).encode()
    yield "whitespace-inside", f"{h64}. {p64}.{sig64}".encode()
    yield "nul-suffix", f"{h64}.{p64}.{sig64}\x00".encode()
    deep = _b64u(b'{"a":' * 50000 + b"1" + b"}" * 50000)
    yield "deep-claims", f"{h64}.{deep}.{sig64}".encode()


def jwt_ops(
    rng: random.Random, s: Seed, all_seeds: Sequence[Seed]
) -> Iterator[tuple[str, str, bytes]]:
    for name, data in jwt_attacks(s):
        yield name, "tamper", data
    token = s.data
    dots = [i for i, c in enumerate(token) if c == ord(".")]
    while True:
        k = rng.randrange(4)
        if k == 0:
            # Replace one base64url character (changes exactly one decoded byte or its padding).
            i = rng.randrange(len(token))
            if i in dots:
                continue
            c = rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
            if c != token[i]:
                yield f"b64u@{i}={chr(c)}", "tamper", token[:i] + bytes([c]) + token[i + 1 :]
        else:
            out = rng.choice((op_truncate, op_splice, op_extend_text, op_flip))(rng, s, all_seeds)
            if out is not None:
                yield out


# --------------------------------------------------------------------------------------------
# Signed-note operators
# --------------------------------------------------------------------------------------------


def note_ops(
    rng: random.Random, s: Seed, all_seeds: Sequence[Seed]
) -> Iterator[tuple[str, str, bytes]]:
    lines = s.data.split(b"\n")
    sig_lines = [ln for ln in lines if ln.startswith("— ".encode())]
    j = b"\n".join
    fixed: list[tuple[str, str, bytes]] = [
        ("crlf", "tamper", s.data.replace(b"\n", b"\r\n")),
        ("no-final-newline", "truncate", s.data.rstrip(b"\n")),
        ("no-blank-line", "tamper", s.data.replace(b"\n\n", b"\n", 1)),
        ("two-blank-lines", "tamper", s.data.replace(b"\n\n", b"\n\n\n", 1)),
        ("nul", "tamper", s.data.replace(b"\n", b"\x00\n", 1)),
        ("non-utf8", "tamper", s.data.replace(b"\n", b"\xff\n", 1)),
        ("hyphen-for-emdash", "tamper", s.data.replace("— ".encode(), b"- ")),
        (
            "101-signatures",
            "tamper",
            s.data + j(sig_lines[:1] * 101) + b"\n" if sig_lines else s.data + b"x",
        ),
        (
            "duplicate-signature",
            "tamper",
            s.data + j(sig_lines[:1]) + b"\n" if sig_lines else s.data + b"x",
        ),
        ("no-signatures", "truncate", s.data[: s.data.rfind(b"\n\n") + 2]),
        ("huge-origin", "tamper", b"a" * HUGE_TEXT + s.data),
        ("size-leading-zero", "tamper", re.sub(rb"\n(\d+)\n", rb"\n0\1\n", s.data, count=1)),
        ("size-negative", "tamper", re.sub(rb"\n(\d+)\n", rb"\n-\1\n", s.data, count=1)),
        ("size-huge", "tamper", re.sub(rb"\n(\d+)\n", b"\n" + b"9" * 30 + b"\n", s.data, count=1)),
    ]
    for line in sig_lines:
        parts = line.split(b" ")
        if len(parts) >= 3:
            raw = base64.b64decode(parts[-1] + b"==")
            bad = bytes([raw[0]]) + bytes([raw[1] ^ 1]) + raw[2:] if len(raw) > 2 else raw
            fixed.append(
                (
                    "sig-flipped",
                    "tamper",
                    s.data.replace(line, b" ".join([*parts[:-1], base64.b64encode(bad)])),
                )
            )
            fixed.append(
                (
                    "sig-renamed",
                    "tamper",
                    s.data.replace(line, b" ".join([parts[0], parts[1] + b"x", *parts[2:]])),
                )
            )
    for name, kind, data in fixed:
        if data != s.data:
            yield name, kind, data
    while True:
        k = rng.randrange(5)
        if k == 0 and len(lines) > 2:
            i = rng.randrange(len(lines) - 1)
            yield f"line-drop-{i}", "tamper", j(lines[:i] + lines[i + 1 :])
        elif k == 1 and len(lines) > 2:
            i = rng.randrange(len(lines) - 1)
            yield f"line-dup-{i}", "tamper", j(lines[: i + 1] + lines[i:])
        elif k == 2 and len(lines) > 3:
            i = rng.randrange(len(lines) - 2)
            yield (
                f"line-swap-{i}",
                "tamper",
                j([*lines[:i], lines[i + 1], lines[i], *lines[i + 2 :]]),
            )
        else:
            out = rng.choice((op_flip, op_byte, op_truncate, op_extend_text, op_splice))(
                rng, s, all_seeds
            )
            if out is not None:
                yield out


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _binary_stream(
    rng: random.Random, s: Seed, all_seeds: Sequence[Seed]
) -> Iterator[tuple[str, str, bytes]]:
    i = 0
    while True:
        out = BINARY_OPS[i % len(BINARY_OPS)](rng, s, all_seeds)
        i += 1
        if out is not None:
            yield out


STREAMS: dict[
    str, Callable[[random.Random, Seed, Sequence[Seed]], Iterator[tuple[str, str, bytes]]]
] = {
    "binary": _binary_stream,
    "xml": xml_ops,
    "json": json_ops,
    "pem": pem_ops,
    "jwt": jwt_ops,
    "note": note_ops,
}


def generate(family: str, *, seed: int = 0, count: int = 1000) -> list[Mutant]:
    """``count`` distinct mutants of ``family``, round-robin over its seeds; deterministic in
    (``family``, ``seed``, the vectors). Mutants equal to a seed are skipped: the oracle may
    treat acceptance of any mutant as a failure for signed formats."""
    fmt, loader = FAMILIES[family]
    # An empty seed (a protobuf message with no fields) has nothing to mutate.
    all_seeds = tuple(s for s in loader() if s.data)
    rng = random.Random(f"lessee-adversarial:{family}:{seed}")
    streams = [STREAMS[fmt](rng, s, all_seeds) for s in all_seeds]
    originals = {s.data for s in all_seeds}
    seen: set[bytes] = set()
    out: list[Mutant] = []
    misses = 0
    i = 0
    while len(out) < count and misses < count * 20 + 100:
        k = i % len(all_seeds)
        i += 1
        name, kind, data = next(streams[k])
        if data in originals or data in seen:
            misses += 1
            continue
        seen.add(data)
        out.append(Mutant(family, all_seeds[k].label, name, kind, data))
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@=+-]", "_", name)[:MAX_OP_NAME]


def write_corpus(
    out: Path, *, seed: int, per_target: int, families: Sequence[str] | None = None
) -> dict[str, int]:
    """Write the corpus (and each family's seeds) under ``out``; returns counts per family."""
    counts: dict[str, int] = {}
    for family in families or sorted(FAMILIES):
        d = out / family
        (d / "seeds").mkdir(parents=True, exist_ok=True)
        for s in seeds(family):
            (d / "seeds" / f"{_safe(s.label)}.bin").write_bytes(s.data)
        mutants = generate(family, seed=seed, count=per_target)
        for i, m in enumerate(mutants):
            (d / f"{i:06d}-{_safe(m.op)}.bin").write_bytes(m.data)
        counts[family] = len(mutants)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.adversarial.corpus", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-target", type=int, default=1000)
    p.add_argument("--family", action="append", choices=sorted(FAMILIES))
    p.add_argument("--print-keyrelease", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.print_keyrelease:
        print(_new_keyrelease_blob().hex())
        return 0
    if args.out is None:
        p.error("--out is required")
    counts = write_corpus(
        args.out, seed=args.seed, per_target=args.per_target, families=args.family
    )
    for family, n in counts.items():
        print(f"{family}: {n}")
    print(f"total: {sum(counts.values())} inputs under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
