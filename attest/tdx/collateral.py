"""Intel TDX collateral: TCB Info, QE Identity, PCK CRL and Root CA CRL, parsed strictly.

Two input shapes are accepted:

* ``QuoteCollateralV3`` JSON (as Phala's dcap-qvl and PCCS clients store it): one object with
  exactly the keys in ``COLLATERAL_V3_KEYS``; TCB Info and QE Identity are JSON *strings*
  holding the signed object text, signatures and CRLs are hex, issuer chains are PEM.
* Intel PCS responses as served (go-tdx-guest keeps these): ``{"tcbInfo":{...},"signature":
  "..."}`` and ``{"enclaveIdentity":{...},"signature":"..."}``, with the issuer chains that
  PCS sends in response headers, and the CRLs as DER.

Intel signs the exact bytes of the ``tcbInfo`` / ``enclaveIdentity`` object *as served*
(ECDSA P-256 over SHA-256, raw r || s). Re-serialising the parsed JSON would change those bytes
(key order, spacing, number forms), so the parser keeps the exact span of the signed object:
in the V3 JSON it is the string value itself (UTF-8), in a PCS response it is the byte range
of the member's value, found with the standard decoder's ``raw_decode`` (the same bytes
go-tdx-guest keeps with ``json.RawMessage``). Signatures and chains are checked in
``attest.tdx.verify``; nothing here trusts anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from attest.errors import InputError, ParseError
from attest.jsonutil import json_depth
from attest.x509chain import X509_DECODE_ERRORS, load_pem_chain, signed_der_canonical

#: A QuoteCollateralV3 JSON larger than this is refused (real ones are 16-19 KB; a Processor
#: CA PCK CRL can add some hundred KB as hex).
MAX_COLLATERAL_JSON_BYTES = 2 * 1024 * 1024
#: One PCS response body (TCB Info with many levels is under 10 KB today).
MAX_PCS_RESPONSE_BYTES = 256 * 1024
#: A DER CRL larger than this is refused (Intel's Platform CA CRL is 2.6 KB, Root CA CRL 0.3 KB).
MAX_CRL_BYTES = 512 * 1024
#: Intel lists a few tens of TCB levels per FMSPC; more is not a TCB Info Intel publishes.
MAX_TCB_LEVELS = 256
#: Advisory ids per level (the longest real list is a few tens).
MAX_ADVISORY_IDS = 256
#: TDX module identities (one per module major version: TDX_01, TDX_03, ...).
MAX_TDX_MODULE_IDENTITIES = 64
#: An issuer chain is the signing certificate and the root.
MAX_ISSUER_CHAIN_CERTS = 3
#: Nesting depth of a collateral JSON document (the real ones nest 5 deep).
MAX_JSON_DEPTH = 16

COLLATERAL_V3_KEYS = frozenset(
    {
        "pck_crl_issuer_chain",
        "root_ca_crl",
        "pck_crl",
        "tcb_info_issuer_chain",
        "tcb_info",
        "tcb_info_signature",
        "qe_identity_issuer_chain",
        "qe_identity",
        "qe_identity_signature",
    }
)

TCB_STATUS_NAMES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)
#: Statuses Intel uses in QE Identity and TDX module identity levels.
IDENTITY_STATUS_NAMES = frozenset({"UpToDate", "OutOfDate", "Revoked"})

_HEX = re.compile(r"[0-9A-Fa-f]*")
_ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
_TDX_MODULE_ID = re.compile(r"TDX_[0-9A-Fa-f]{2}")


class CollateralParseError(ParseError):
    """Collateral that does not follow Intel's TCB Info / QE Identity / CRL formats."""


@dataclass(frozen=True)
class TcbLevel:
    """One ``tcbLevels`` entry of a TDX TCB Info (v3)."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...]
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModule:
    """``tdxModule``: the expected MRSIGNERSEAM and SEAM attributes (with mask)."""

    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes


@dataclass(frozen=True)
class IdentityTcbLevel:
    """A level of a TDX module identity or of the QE identity: ISVSVN -> status."""

    isv_svn: int
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModuleIdentity:
    """``tdxModuleIdentities[i]``: one TDX module major version (``TDX_01``, ``TDX_03``...)."""

    id: str
    module: TdxModule
    tcb_levels: tuple[IdentityTcbLevel, ...]


@dataclass(frozen=True)
class TcbInfo:
    """A TDX TCB Info v3, with the exact bytes Intel signed and the signature."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModule | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]
    signed_bytes: bytes
    signature: bytes


@dataclass(frozen=True)
class QeIdentity:
    """A QE Identity v2 (``TD_QE`` for TDX), with the exact bytes Intel signed."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isv_prod_id: int
    tcb_levels: tuple[IdentityTcbLevel, ...]
    signed_bytes: bytes
    signature: bytes


@dataclass(frozen=True)
class Crl:
    """A DER CRL kept with its bytes (so an audit log can archive exactly what was used)."""

    crl: x509.CertificateRevocationList
    der: bytes


@dataclass(frozen=True)
class TdxCollateral:
    """Everything needed to appraise a TDX quote's platform, none of it verified yet."""

    pck_crl_issuer_chain: tuple[x509.Certificate, ...]
    pck_crl: Crl
    root_ca_crl: Crl
    tcb_info_issuer_chain: tuple[x509.Certificate, ...]
    tcb_info: TcbInfo
    qe_identity_issuer_chain: tuple[x509.Certificate, ...]
    qe_identity: QeIdentity


# --- strict JSON -------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CollateralParseError(f"duplicate JSON key {key!r}", field=key)
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise CollateralParseError(f"non-standard JSON constant {name}")


def _decoder() -> json.JSONDecoder:
    return json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _loads(text: str, what: str) -> Any:
    """Decode JSON with duplicate keys, NaN/Infinity and deep nesting refused."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise CollateralParseError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH}", field=what)
    try:
        return _decoder().decode(text)
    except CollateralParseError:
        raise
    except (ValueError, RecursionError) as exc:
        raise CollateralParseError(f"{what}: not valid JSON: {exc}", field=what) from exc


def _text(data: bytes, what: str, limit: int) -> str:
    if len(data) > limit:
        raise InputError(f"{what} is {len(data)} bytes; the limit is {limit}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CollateralParseError(f"{what}: not UTF-8", field=what, offset=exc.start) from exc


def raw_member_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character spans of each top-level member value of a JSON object, exactly as written.

    Walks the top level with the standard decoder's ``raw_decode`` so each value's extent is
    the decoder's own; duplicate keys and trailing data are refused.
    """
    dec = _decoder()
    ws = " \t\n\r"
    i = 0
    n = len(text)

    def skip(j: int) -> int:
        while j < n and text[j] in ws:
            j += 1
        return j

    def expect(j: int, ch: str) -> int:
        if j >= n or text[j] != ch:
            raise CollateralParseError(f"expected {ch!r} in JSON object", offset=j)
        return j + 1

    if json_depth(text) > MAX_JSON_DEPTH:
        raise CollateralParseError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    spans: dict[str, tuple[int, int]] = {}
    i = expect(skip(i), "{")
    i = skip(i)
    if i < n and text[i] == "}":
        i += 1
    else:
        while True:
            try:
                key, i = dec.raw_decode(text, i)
            except ValueError as exc:
                raise CollateralParseError(f"bad JSON key: {exc}", offset=i) from exc
            if not isinstance(key, str):
                raise CollateralParseError("JSON object key is not a string", offset=i)
            if key in spans:
                raise CollateralParseError(f"duplicate JSON key {key!r}", field=key, offset=i)
            i = expect(skip(i), ":")
            start = skip(i)
            try:
                _, end = dec.raw_decode(text, start)
            except CollateralParseError:
                raise
            except (ValueError, RecursionError) as exc:
                raise CollateralParseError(
                    f"bad JSON value: {exc}", field=key, offset=start
                ) from exc
            spans[key] = (start, end)
            i = skip(end)
            if i < n and text[i] == ",":
                i = skip(i + 1)
                continue
            i = expect(i, "}")
            break
    if skip(i) != n:
        raise CollateralParseError("data after the JSON object", offset=skip(i))
    return spans


# --- field helpers -----------------------------------------------------------------------


def _obj(
    value: Any, what: str, required: set[str], optional: frozenset[str] = frozenset()
) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise CollateralParseError(f"{what} is not a JSON object", field=what)
    missing = required - value.keys()
    if missing:
        raise CollateralParseError(f"{what}: missing {sorted(missing)}", field=what)
    unknown = value.keys() - required - optional
    if unknown:
        raise CollateralParseError(f"{what}: unknown fields {sorted(unknown)}", field=what)
    return value


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise CollateralParseError(f"{what} is not an integer in [{lo}, {hi}]", field=what)
    return value


def _str(value: Any, what: str, limit: int = 256) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise CollateralParseError(
            f"{what} is not a string of at most {limit} characters", field=what
        )
    return value


def _hex(value: Any, what: str, size: int | None = None, limit: int = 1 << 22) -> bytes:
    text = _str(value, what, limit)
    if len(text) % 2 or not _HEX.fullmatch(text):
        raise CollateralParseError(f"{what} is not hex", field=what)
    out = bytes.fromhex(text)
    if size is not None and len(out) != size:
        raise CollateralParseError(f"{what} is {len(out)} bytes, expected {size}", field=what)
    return out


def _time(value: Any, what: str) -> datetime:
    text = _str(value, what, 40)
    if not _ISO_Z.fullmatch(text):
        raise CollateralParseError(f"{what} is not an ISO-8601 UTC time", field=what)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        raise CollateralParseError(f"{what} is not a valid time", field=what) from exc


def _status(value: Any, what: str, allowed: frozenset[str]) -> str:
    text = _str(value, what, 64)
    if text not in allowed:
        raise CollateralParseError(f"{what}: unknown TCB status {text!r}", field=what)
    return text


def _advisories(level: Mapping[str, Any], what: str) -> tuple[str, ...]:
    ids = level.get("advisoryIDs", [])
    if not isinstance(ids, list) or len(ids) > MAX_ADVISORY_IDS:
        raise CollateralParseError(
            f"{what}.advisoryIDs is not a list (max {MAX_ADVISORY_IDS})", field=what
        )
    return tuple(_str(x, f"{what}.advisoryIDs", 64) for x in ids)


def _components(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) != 16:
        raise CollateralParseError(f"{what} is not a list of 16 components", field=what)
    out = []
    for i, comp in enumerate(value):
        c = _obj(comp, f"{what}[{i}]", {"svn"}, frozenset({"category", "type"}))
        for k in ("category", "type"):
            if k in c:
                _str(c[k], f"{what}[{i}].{k}")
        out.append(_int(c["svn"], f"{what}[{i}].svn", 0, 255))
    return tuple(out)


def _module(value: Any, what: str, extra: frozenset[str] = frozenset()) -> TdxModule:
    m = _obj(value, what, {"mrsigner", "attributes", "attributesMask"}, extra)
    return TdxModule(
        mrsigner=_hex(m["mrsigner"], f"{what}.mrsigner", 48),
        attributes=_hex(m["attributes"], f"{what}.attributes", 8),
        attributes_mask=_hex(m["attributesMask"], f"{what}.attributesMask", 8),
    )


def _identity_levels(value: Any, what: str) -> tuple[IdentityTcbLevel, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_TCB_LEVELS:
        raise CollateralParseError(
            f"{what} is not a non-empty list (max {MAX_TCB_LEVELS})", field=what
        )
    levels = []
    for i, raw in enumerate(value):
        w = f"{what}[{i}]"
        lv = _obj(raw, w, {"tcb", "tcbDate", "tcbStatus"}, frozenset({"advisoryIDs"}))
        tcb = _obj(lv["tcb"], f"{w}.tcb", {"isvsvn"})
        levels.append(
            IdentityTcbLevel(
                isv_svn=_int(tcb["isvsvn"], f"{w}.tcb.isvsvn", 0, 0xFFFF),
                tcb_date=_time(lv["tcbDate"], f"{w}.tcbDate"),
                status=_status(lv["tcbStatus"], f"{w}.tcbStatus", IDENTITY_STATUS_NAMES),
                advisory_ids=_advisories(lv, w),
            )
        )
    return tuple(levels)


def _utf8(value: Any, what: str, limit: int) -> bytes:
    """A JSON string field's UTF-8 bytes (lone surrogates from ``\\ud800`` escapes refused)."""
    try:
        return _str(value, what, limit).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CollateralParseError(f"{what} is not valid Unicode", field=what) from exc


def _signature(value: Any, what: str) -> bytes:
    return _hex(value, what, 64)


# --- TCB Info and QE Identity ------------------------------------------------------------


def parse_tcb_info(signed_bytes: bytes, signature: bytes) -> TcbInfo:
    """Parse the signed ``tcbInfo`` object text (TDX, version 3); keep its exact bytes."""
    text = _text(signed_bytes, "tcbInfo", MAX_PCS_RESPONSE_BYTES)
    t = _obj(
        _loads(text, "tcbInfo"),
        "tcbInfo",
        {"id", "version", "issueDate", "nextUpdate", "fmspc", "pceId", "tcbType",
         "tcbEvaluationDataNumber", "tcbLevels"},
        frozenset({"tdxModule", "tdxModuleIdentities"}),
    )  # fmt: skip
    tcb_id = _str(t["id"], "tcbInfo.id", 16)
    version = _int(t["version"], "tcbInfo.version", 0, 0xFFFF)
    if tcb_id != "TDX" or version != 3:
        raise CollateralParseError(
            f"TCB Info is id {tcb_id!r} version {version}; a TDX TCB Info v3 is required",
            field="tcbInfo.id",
        )
    levels_raw = t["tcbLevels"]
    if not isinstance(levels_raw, list) or not levels_raw or len(levels_raw) > MAX_TCB_LEVELS:
        raise CollateralParseError(
            f"tcbInfo.tcbLevels is not a non-empty list (max {MAX_TCB_LEVELS})", field="tcbLevels"
        )
    levels = []
    for i, raw in enumerate(levels_raw):
        w = f"tcbInfo.tcbLevels[{i}]"
        lv = _obj(raw, w, {"tcb", "tcbDate", "tcbStatus"}, frozenset({"advisoryIDs"}))
        tcb = _obj(lv["tcb"], f"{w}.tcb", {"sgxtcbcomponents", "pcesvn", "tdxtcbcomponents"})
        levels.append(
            TcbLevel(
                sgx_components=_components(tcb["sgxtcbcomponents"], f"{w}.tcb.sgxtcbcomponents"),
                pce_svn=_int(tcb["pcesvn"], f"{w}.tcb.pcesvn", 0, 0xFFFF),
                tdx_components=_components(tcb["tdxtcbcomponents"], f"{w}.tcb.tdxtcbcomponents"),
                tcb_date=_time(lv["tcbDate"], f"{w}.tcbDate"),
                status=_status(lv["tcbStatus"], f"{w}.tcbStatus", TCB_STATUS_NAMES),
                advisory_ids=_advisories(lv, w),
            )
        )
    identities: list[TdxModuleIdentity] = []
    ids_raw = t.get("tdxModuleIdentities", [])
    if not isinstance(ids_raw, list) or len(ids_raw) > MAX_TDX_MODULE_IDENTITIES:
        raise CollateralParseError(
            f"tcbInfo.tdxModuleIdentities is not a list (max {MAX_TDX_MODULE_IDENTITIES})",
            field="tdxModuleIdentities",
        )
    seen: set[str] = set()
    for i, raw in enumerate(ids_raw):
        w = f"tcbInfo.tdxModuleIdentities[{i}]"
        obj = _obj(raw, w, {"id", "mrsigner", "attributes", "attributesMask", "tcbLevels"})
        ident = _str(obj["id"], f"{w}.id", 16)
        if not _TDX_MODULE_ID.fullmatch(ident) or ident.upper() in seen:
            raise CollateralParseError(f"{w}.id {ident!r} is not a unique TDX_xx id", field=w)
        seen.add(ident.upper())
        identities.append(
            TdxModuleIdentity(
                id=ident,
                module=_module(
                    {k: obj[k] for k in ("mrsigner", "attributes", "attributesMask")}, w
                ),
                tcb_levels=_identity_levels(obj["tcbLevels"], f"{w}.tcbLevels"),
            )
        )
    return TcbInfo(
        id=tcb_id,
        version=version,
        issue_date=_time(t["issueDate"], "tcbInfo.issueDate"),
        next_update=_time(t["nextUpdate"], "tcbInfo.nextUpdate"),
        fmspc=_hex(t["fmspc"], "tcbInfo.fmspc", 6),
        pce_id=_hex(t["pceId"], "tcbInfo.pceId", 2),
        tcb_type=_int(t["tcbType"], "tcbInfo.tcbType", 0, 0),
        tcb_evaluation_data_number=_int(
            t["tcbEvaluationDataNumber"], "tcbInfo.tcbEvaluationDataNumber", 0, 0xFFFFFFFF
        ),
        tdx_module=_module(t["tdxModule"], "tcbInfo.tdxModule") if "tdxModule" in t else None,
        tdx_module_identities=tuple(identities),
        tcb_levels=tuple(levels),
        signed_bytes=bytes(signed_bytes),
        signature=signature,
    )


def parse_qe_identity(signed_bytes: bytes, signature: bytes) -> QeIdentity:
    """Parse the signed ``enclaveIdentity`` object text (``TD_QE``, version 2)."""
    text = _text(signed_bytes, "enclaveIdentity", MAX_PCS_RESPONSE_BYTES)
    e = _obj(
        _loads(text, "enclaveIdentity"),
        "enclaveIdentity",
        {"id", "version", "issueDate", "nextUpdate", "tcbEvaluationDataNumber", "miscselect",
         "miscselectMask", "attributes", "attributesMask", "mrsigner", "isvprodid", "tcbLevels"},
    )  # fmt: skip
    ident = _str(e["id"], "enclaveIdentity.id", 16)
    version = _int(e["version"], "enclaveIdentity.version", 0, 0xFFFF)
    if ident != "TD_QE" or version != 2:
        raise CollateralParseError(
            f"QE Identity is id {ident!r} version {version}; TD_QE version 2 is required",
            field="enclaveIdentity.id",
        )
    return QeIdentity(
        id=ident,
        version=version,
        issue_date=_time(e["issueDate"], "enclaveIdentity.issueDate"),
        next_update=_time(e["nextUpdate"], "enclaveIdentity.nextUpdate"),
        tcb_evaluation_data_number=_int(
            e["tcbEvaluationDataNumber"], "enclaveIdentity.tcbEvaluationDataNumber", 0, 0xFFFFFFFF
        ),
        # MISCSELECT is printed as the big-endian hex of the 32-bit value.
        miscselect=int.from_bytes(_hex(e["miscselect"], "enclaveIdentity.miscselect", 4), "big"),
        miscselect_mask=int.from_bytes(
            _hex(e["miscselectMask"], "enclaveIdentity.miscselectMask", 4), "big"
        ),
        attributes=_hex(e["attributes"], "enclaveIdentity.attributes", 16),
        attributes_mask=_hex(e["attributesMask"], "enclaveIdentity.attributesMask", 16),
        mrsigner=_hex(e["mrsigner"], "enclaveIdentity.mrsigner", 32),
        isv_prod_id=_int(e["isvprodid"], "enclaveIdentity.isvprodid", 0, 0xFFFF),
        tcb_levels=_identity_levels(e["tcbLevels"], "enclaveIdentity.tcbLevels"),
        signed_bytes=bytes(signed_bytes),
        signature=signature,
    )


def _split_pcs_response(body: bytes, member: str) -> tuple[bytes, bytes]:
    """Exact bytes of ``member``'s value and the decoded signature of a PCS response."""
    text = _text(body, member, MAX_PCS_RESPONSE_BYTES)
    spans = raw_member_spans(text)
    if set(spans) != {member, "signature"}:
        raise CollateralParseError(
            f"PCS response must hold exactly {member!r} and 'signature', got {sorted(spans)}",
            field=member,
        )
    start, end = spans[member]
    if text[start] != "{":
        raise CollateralParseError(f"{member} is not a JSON object", field=member, offset=start)
    s0, s1 = spans["signature"]
    signature = _signature(_loads(text[s0:s1], "signature"), "signature")
    return text[start:end].encode("utf-8"), signature


def parse_tcb_info_response(body: bytes) -> TcbInfo:
    """Parse an Intel PCS ``/tdx/certification/v4/tcb`` response body as served."""
    signed, signature = _split_pcs_response(body, "tcbInfo")
    return parse_tcb_info(signed, signature)


def parse_qe_identity_response(body: bytes) -> QeIdentity:
    """Parse an Intel PCS ``/tdx/certification/v4/qe/identity`` response body as served."""
    signed, signature = _split_pcs_response(body, "enclaveIdentity")
    return parse_qe_identity(signed, signature)


# --- CRLs and chains ---------------------------------------------------------------------


def touch_certificate(
    cert: x509.Certificate, what: str, error: Callable[..., Exception] = InputError
) -> None:
    """Decode the fields ``cryptography`` parses lazily, so a malformed name or extension
    fails here with a typed error instead of later inside a chain check or a message."""
    try:
        _ = (cert.subject, cert.issuer, cert.extensions, cert.serial_number)
        _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature_hash_algorithm)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise error(f"{what}: malformed certificate: {exc}") from exc


def parse_crl(der: bytes, *, what: str = "CRL") -> Crl:
    """Parse one DER CRL (bounded), decoding every lazily parsed field up front."""
    if len(der) > MAX_CRL_BYTES:
        raise InputError(f"{what} is {len(der)} bytes; the limit is {MAX_CRL_BYTES}")
    try:
        crl = x509.load_der_x509_crl(bytes(der))
        _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.extensions)
        _ = (crl.signature_hash_algorithm, [(r.serial_number, r.extensions) for r in crl])
    except (*X509_DECODE_ERRORS, UnsupportedAlgorithm) as exc:
        raise CollateralParseError(f"{what}: malformed DER CRL: {exc}", field=what) from exc
    if not signed_der_canonical(bytes(der)):  # the exact bytes are archived and cache keys
        raise CollateralParseError(
            f"{what}: malformed DER CRL: signature BIT STRING is not DER (unused bits)", field=what
        )
    return Crl(crl=crl, der=bytes(der))


def parse_issuer_chain(pem: bytes, *, what: str) -> tuple[x509.Certificate, ...]:
    """An issuer chain as PCS sends it: the signing certificate, then the root (PEM)."""
    try:
        certs = load_pem_chain(pem, max_certs=MAX_ISSUER_CHAIN_CERTS)
    except InputError as exc:
        raise CollateralParseError(f"{what}: {exc}", field=what) from exc
    for cert in certs:
        touch_certificate(cert, what, CollateralParseError)
    return certs


def collateral_from_pcs(
    *,
    tcb_info_response: bytes,
    tcb_info_issuer_chain: bytes,
    qe_identity_response: bytes,
    qe_identity_issuer_chain: bytes,
    pck_crl: bytes,
    pck_crl_issuer_chain: bytes,
    root_ca_crl: bytes,
) -> TdxCollateral:
    """Assemble collateral from separate Intel PCS responses (bodies as served, CRLs as DER)."""
    return TdxCollateral(
        pck_crl_issuer_chain=parse_issuer_chain(pck_crl_issuer_chain, what="pck_crl_issuer_chain"),
        pck_crl=parse_crl(pck_crl, what="pck_crl"),
        root_ca_crl=parse_crl(root_ca_crl, what="root_ca_crl"),
        tcb_info_issuer_chain=parse_issuer_chain(
            tcb_info_issuer_chain, what="tcb_info_issuer_chain"
        ),
        tcb_info=parse_tcb_info_response(tcb_info_response),
        qe_identity_issuer_chain=parse_issuer_chain(
            qe_identity_issuer_chain, what="qe_identity_issuer_chain"
        ),
        qe_identity=parse_qe_identity_response(qe_identity_response),
    )


def parse_collateral_json(data: bytes) -> TdxCollateral:
    """Parse a ``QuoteCollateralV3`` JSON document (dcap-qvl / PCCS layout)."""
    text = _text(data, "collateral", MAX_COLLATERAL_JSON_BYTES)
    doc = _obj(_loads(text, "collateral"), "collateral", set(COLLATERAL_V3_KEYS))
    return TdxCollateral(
        pck_crl_issuer_chain=parse_issuer_chain(
            _utf8(doc["pck_crl_issuer_chain"], "pck_crl_issuer_chain", 64 * 1024),
            what="pck_crl_issuer_chain",
        ),
        pck_crl=parse_crl(_hex(doc["pck_crl"], "pck_crl", None, 2 * MAX_CRL_BYTES), what="pck_crl"),
        root_ca_crl=parse_crl(
            _hex(doc["root_ca_crl"], "root_ca_crl", None, 2 * MAX_CRL_BYTES), what="root_ca_crl"
        ),
        tcb_info_issuer_chain=parse_issuer_chain(
            _utf8(doc["tcb_info_issuer_chain"], "tcb_info_issuer_chain", 64 * 1024),
            what="tcb_info_issuer_chain",
        ),
        tcb_info=parse_tcb_info(
            _utf8(doc["tcb_info"], "tcb_info", MAX_PCS_RESPONSE_BYTES),
            _signature(doc["tcb_info_signature"], "tcb_info_signature"),
        ),
        qe_identity_issuer_chain=parse_issuer_chain(
            _utf8(doc["qe_identity_issuer_chain"], "qe_identity_issuer_chain", 64 * 1024),
            what="qe_identity_issuer_chain",
        ),
        qe_identity=parse_qe_identity(
            _utf8(doc["qe_identity"], "qe_identity", MAX_PCS_RESPONSE_BYTES),
            _signature(doc["qe_identity_signature"], "qe_identity_signature"),
        ),
    )
