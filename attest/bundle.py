"""The evidence bundle: everything one enclave presents in one attestation session.

The same structure travels in the gRPC ``EvidenceBundle`` message (agent/rpc/convert.py maps
it) and as a JSON file for ``lessee appraise --evidence-bundle`` and for the log's archive.
JSON form (bytes as standard base64)::

    {"version": 1,
     "cpu": {"snp": {"report": B64, "certificates": [B64, ...], "crl": B64}}  # "crl" optional
            # or {"tdx": {"quote": B64, "collateral_json": B64}}
     "gpus": [{"arch": "HOPPER", "report": B64, "certificate_chain_pem": B64,
               "ocsp_responses": [B64...], "rims": [B64...]}],
     "switches": [...same shape...],
     "cc_mode_on": true, "devtools_on": false}
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from attest.binding import DeviceState
from attest.errors import InputError
from attest.jsonutil import load_json
from attest.snp.verify import MAX_CRL_BYTES

#: A bundle with 8 GPUs, 4 switches, their chains, RIMs and OCSP responses is ~1 MiB.
MAX_BUNDLE_BYTES = 8 * 1024 * 1024
MAX_DEVICES = 64
MAX_ITEMS_PER_LIST = 16
#: One piece of evidence or collateral (a RIM is ~20 KiB, a TDX collateral JSON ~20 KiB).
MAX_ITEM_BYTES = 512 * 1024


@dataclass(frozen=True)
class DeviceEvidenceIn:
    arch: str
    report: bytes
    certificate_chain_pem: bytes
    ocsp_responses: tuple[bytes, ...] = ()
    rims: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class SnpEvidenceIn:
    """A SEV-SNP report, the certificates that sign it, and optionally AMD's CRL.

    ``crl`` is AMD's CRL for the product and signing key (KDS ``/vcek/v1/<product>/crl``, or
    ``/vlek/v1/<product>/crl`` for a VLEK-signed report; DER or PEM, at most ``MAX_CRL_BYTES``). It travels with the evidence, as TDX collateral and NVIDIA's stapled
    OCSP answers do, so the log archives it and an audit replay re-checks it as of the logged
    time. ``None``: not supplied (the appraisal then applies ``missing_revocation``).
    """

    report: bytes
    certificates: tuple[bytes, ...] = ()
    crl: bytes | None = None

    def __post_init__(self) -> None:
        # One meaning, one encoding: "no CRL" is None, never b"" (the JSON and protobuf forms
        # could not tell an empty CRL from an absent one).
        if self.crl is not None and not self.crl:
            raise InputError("an SNP CRL is None when absent, never empty")


@dataclass(frozen=True)
class TdxEvidenceIn:
    quote: bytes
    collateral_json: bytes = b""


@dataclass(frozen=True)
class EvidenceBundle:
    cpu: SnpEvidenceIn | TdxEvidenceIn | None
    gpus: tuple[DeviceEvidenceIn, ...] = ()
    switches: tuple[DeviceEvidenceIn, ...] = ()
    cc_mode_on: bool = False
    devtools_on: bool = True

    @property
    def device_state(self) -> DeviceState:
        """What no signed report carries (the flags, and how many devices there are), as a
        version-2 binding binds it."""
        return DeviceState(
            cc_mode_on=self.cc_mode_on,
            devtools_on=self.devtools_on,
            gpus=len(self.gpus),
            switches=len(self.switches),
        )

    def to_json(self) -> bytes:
        """The JSON form: exactly ``json.dumps(doc, sort_keys=True, separators=(",", ":"))`` of
        the document in the module docstring, encoded as ASCII.

        These bytes are archived in the log and hashed into its entries, so they never change;
        ``tests/broker/test_perf_equivalence.py`` compares them with ``json.dumps`` of the
        document. They are written directly (keys in sorted order) rather than through a dict
        and ``json.dumps``, and the base64 of collateral (chains, RIMs, OCSP answers, AMD
        certificates) comes from ``_b64_collateral``: the broker encodes one bundle per Attest
        and all but the reports are the same bytes every time (issue #5).
        """
        parts: list[bytes] = [b'{"cc_mode_on":', _scalar(self.cc_mode_on), b',"cpu":']
        cpu = self.cpu
        if isinstance(cpu, SnpEvidenceIn):
            parts += [
                b'{"snp":{"certificates":[',
                b",".join([_b64_collateral(c) for c in cpu.certificates]),
                b"]",
            ]
            if cpu.crl is not None:  # "crl" sorts between "certificates" and "report"
                parts += [b',"crl":', _b64_collateral(cpu.crl)]
            parts += [b',"report":', _b64(cpu.report), b"}}"]
        elif isinstance(cpu, TdxEvidenceIn):
            parts += [
                b'{"tdx":{"collateral_json":',
                _b64_collateral(cpu.collateral_json),
                b',"quote":',
                _b64(cpu.quote),
                b"}}",
            ]
        else:
            parts.append(b"null")
        parts += [b',"devtools_on":', _scalar(self.devtools_on), b',"gpus":[']
        parts.append(b",".join([_device_json(d) for d in self.gpus]))
        parts.append(b'],"switches":[')
        parts.append(b",".join([_device_json(d) for d in self.switches]))
        parts.append(b'],"version":1}')
        return b"".join(parts)


def _device_json(d: DeviceEvidenceIn) -> bytes:
    """One device object of the bundle JSON, keys in sorted order."""
    return b"".join(
        (
            b'{"arch":',
            _scalar(d.arch),
            b',"certificate_chain_pem":',
            _b64_collateral(d.certificate_chain_pem),
            b',"ocsp_responses":[',
            b",".join([_b64_collateral(x) for x in d.ocsp_responses]),
            b'],"report":',
            _b64(d.report),
            b',"rims":[',
            b",".join([_b64_collateral(x) for x in d.rims]),
            b"]}",
        )
    )


def _scalar(value: object) -> bytes:
    """``json.dumps(value)`` (ASCII-escaped), with the two booleans spelled out."""
    if value is True:
        return b"true"
    if value is False:
        return b"false"
    return json.dumps(value).encode()


def _b64(data: bytes) -> bytes:
    """A quoted standard-base64 JSON string. The alphabet needs no JSON escaping, so the quoted
    text is emitted as is (``json.dumps``' escaper over the long strings was the biggest part
    of encoding a bundle, issue #5)."""
    return b'"' + base64.b64encode(data) + b'"'


#: Collateral items whose quoted base64 ``_b64_collateral`` keeps, by exact bytes (least
#: recently used out first). A fleet presents one chain per GPU and NVSwitch and a few RIMs and
#: OCSP answers per driver version and refresh period; 256 covers 32 eight-GPU servers with
#: their RIMs. A miss only costs the encoding again; the bound keeps memory finite.
MAX_CACHED_ENCODINGS = 256
#: Only items up to this size are kept (a RIM is ~20 KiB, a chain ~6 KiB), so the memo holds at
#: most 256 x (32 KiB + 43 KiB of base64) = ~19 MiB even under a flood of distinct maximal items.
MAX_CACHED_ENCODING_INPUT_BYTES = 32 * 1024


@lru_cache(maxsize=MAX_CACHED_ENCODINGS)
def _b64_cached(data: bytes) -> bytes:
    return _b64(data)


def _b64_collateral(data: bytes) -> bytes:
    """``_b64(data)``, remembered for collateral: the same certificate chains, RIMs and OCSP
    answers come back in every bundle of a host, and looking one up (hashing and comparing its
    bytes, in C) costs a fraction of encoding it. Keyed by the exact bytes, so a hit is the
    encoding of those very bytes; reports, which change per session, are never kept."""
    if type(data) is bytes and len(data) <= MAX_CACHED_ENCODING_INPUT_BYTES:
        return _b64_cached(data)
    return _b64(data)


def _bytes(
    obj: dict[str, Any],
    key: str,
    where: str,
    *,
    required: bool = True,
    limit: int = MAX_ITEM_BYTES,
) -> bytes:
    value = obj.get(key)
    if value is None and not required:
        return b""
    if not isinstance(value, str):
        raise InputError(f"evidence bundle: {where}.{key} must be a base64 string")
    if len(value) > (limit + 2) // 3 * 4:
        raise InputError(f"evidence bundle: {where}.{key} is larger than {limit} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"evidence bundle: {where}.{key} is not base64") from exc
    if len(data) > limit:
        raise InputError(f"evidence bundle: {where}.{key} is larger than {limit} bytes")
    return data


def _crl(obj: dict[str, Any], where: str) -> bytes | None:
    """The optional SNP CRL: absent means none; present it must be 1..MAX_CRL_BYTES bytes (an
    empty string is refused rather than read as "none", so one meaning has one encoding)."""
    if "crl" not in obj:
        return None
    data = _bytes(obj, "crl", where, limit=MAX_CRL_BYTES)
    if not data:
        raise InputError(f"evidence bundle: {where}.crl is empty (omit it when there is none)")
    return data


def _list(obj: dict[str, Any], key: str, where: str) -> tuple[bytes, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_ITEMS_PER_LIST:
        raise InputError(
            f"evidence bundle: {where}.{key} must be a list of at most {MAX_ITEMS_PER_LIST}"
        )
    return tuple(_bytes({"x": v}, "x", f"{where}.{key}[{i}]") for i, v in enumerate(value))


def _only(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InputError(f"evidence bundle: {where} must be an object")
    unknown = set(obj) - allowed
    if unknown:
        raise InputError(
            f"evidence bundle: unknown field(s) in {where}: {', '.join(sorted(unknown))}"
        )
    return obj


def _device(obj: Any, where: str) -> DeviceEvidenceIn:
    d = _only(obj, {"arch", "report", "certificate_chain_pem", "ocsp_responses", "rims"}, where)
    arch = d.get("arch")
    if not isinstance(arch, str) or not 0 < len(arch) <= 32:
        raise InputError(f"evidence bundle: {where}.arch must be a short string")
    return DeviceEvidenceIn(
        arch=arch,
        report=_bytes(d, "report", where),
        certificate_chain_pem=_bytes(d, "certificate_chain_pem", where),
        ocsp_responses=_list(d, "ocsp_responses", where),
        rims=_list(d, "rims", where),
    )


def load_bundle(data: bytes) -> EvidenceBundle:
    """Parse the JSON form strictly (unknown fields, wrong types and oversize are errors)."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise InputError(f"evidence bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    doc = load_json(data, what="evidence bundle")
    top = _only(doc, {"version", "cpu", "gpus", "switches", "cc_mode_on", "devtools_on"}, "bundle")
    if type(top.get("version")) is not int or top["version"] != 1:
        # ``True == 1`` and ``1.0 == 1`` in Python: only the integer 1 is the version, so one
        # bundle has one spelling (the log archives it, and clients compare it by hash).
        raise InputError("evidence bundle: version must be 1")
    cpu: SnpEvidenceIn | TdxEvidenceIn | None = None
    if top.get("cpu") is not None:
        c = _only(top["cpu"], {"snp", "tdx"}, "cpu")
        if len(c) != 1:
            raise InputError("evidence bundle: cpu must hold exactly one of snp, tdx")
        if "snp" in c:
            s = _only(c["snp"], {"report", "certificates", "crl"}, "cpu.snp")
            cpu = SnpEvidenceIn(
                report=_bytes(s, "report", "cpu.snp"),
                certificates=_list(s, "certificates", "cpu.snp"),
                crl=_crl(s, "cpu.snp"),
            )
        else:
            t = _only(c["tdx"], {"quote", "collateral_json"}, "cpu.tdx")
            cpu = TdxEvidenceIn(
                quote=_bytes(t, "quote", "cpu.tdx"),
                collateral_json=_bytes(t, "collateral_json", "cpu.tdx", required=False),
            )
    devices = []
    for key in ("gpus", "switches"):
        items = top.get(key, [])
        if not isinstance(items, list) or len(items) > MAX_DEVICES:
            raise InputError(f"evidence bundle: {key} must be a list of at most {MAX_DEVICES}")
        devices.append(tuple(_device(x, f"{key}[{i}]") for i, x in enumerate(items)))
    # Absent NVML flags are read as the unsafe state, so a bundle that omits them is refused.
    cc_mode_on = top.get("cc_mode_on", False)
    devtools_on = top.get("devtools_on", True)
    if not isinstance(cc_mode_on, bool) or not isinstance(devtools_on, bool):
        raise InputError("evidence bundle: cc_mode_on and devtools_on must be true or false")
    return EvidenceBundle(
        cpu=cpu,
        gpus=devices[0],
        switches=devices[1],
        cc_mode_on=cc_mode_on,
        devtools_on=devtools_on,
    )
