"""The table of parsers and verifiers under adversarial test: one entry per target.

Each target names the corpus family it eats, the id of the threat in ``threat_model/threats.toml``
it tests (``tests/adversarial/test_targets_threats.py`` checks the ids exist), the callable, the
exceptions it may raise (typed errors from ``attest/errors.py`` and the module's own subclasses;
nothing else), and what "accepted" means:

* a *parser* may accept a mutant (a flipped measurement byte is still a well-formed report),
  unless the mutant is a truncation or has trailing bytes and the format forbids that
  (``strict_framing``), or the mutant is an XML entity/DTD attack (``must_reject``);
* a *verifier* must never return a passing result whose content differs from every real seed:
  ``fingerprint`` reduces the result to what was vouched for (the signed bytes, the measured
  values, the claims) and any accepted mutant with a new fingerprint is a FAILURE.

``call(data, seed_label)`` gets the seed label so a verifier can pick the context that belongs to
the seed (its certificate chain, key, verification time); atheris passes the first seed's label.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from google.protobuf.message import DecodeError

from attest.errors import InputError, LesseeError, ParseError, VerificationError
from tests.adversarial import corpus

#: Verification times (same values as tests/conftest.py and tests/tdx/helpers.py).
TODAY = datetime(2026, 11, 28, tzinfo=UTC)
RIM_ERA = datetime(2024, 6, 1, tzinfo=UTC)
DCAP_AT = datetime(2025, 6, 19, 10, 16, 3, tzinfo=UTC) + timedelta(hours=1)
OUTDATED_AT = datetime(2026, 2, 18, 10, 58, 51, tzinfo=UTC) + timedelta(hours=1)
EAR_AT = datetime.fromtimestamp(corpus.EAR_AT_POSIX, tz=UTC)

Call = Callable[[bytes, str], Any]


@dataclass(frozen=True)
class Target:
    name: str
    threat: str
    family: str
    call: Call
    allowed: tuple[type[BaseException], ...]
    #: What "accepted" means for this target, in words (reported in docs/security.md).
    accepts: str
    #: Result -> what it vouches for; None for parsers (acceptance alone is not a failure).
    fingerprint: Callable[[Any], Any] | None = None
    #: Result -> did it pass? (OCSP answers with a verdict instead of raising.)
    passed: Callable[[Any], bool] = lambda _r: True
    #: Truncated inputs and inputs with trailing bytes must be refused.
    strict_framing: bool = True
    #: Mutant operator prefixes that must always be refused (entity/DTD attacks).
    must_reject: tuple[str, ...] = ()
    #: Seeds the target must accept unmutated (None: all seeds of the family).
    baseline: tuple[str, ...] | None = None
    #: Expensive targets run ``per_target // cost`` inputs.
    cost: int = 1
    #: A binary parser that fuzz_atheris.py drives.
    atheris: bool = False


# --- context helpers (all from the real vectors / committed test keys) -----------------------


@cache
def _device_chains() -> dict[str, tuple[Any, ...]]:
    import base64
    import json

    from attest.x509chain import load_pem_chain

    n = corpus.NVIDIA
    out = {
        "hopper": load_pem_chain((n / "hopper/hopperCertChain.txt").read_bytes()),
        "hopper_legacy": load_pem_chain((n / "hopper_legacy/gpuAkCertChain.txt").read_bytes()),
        "blackwell": load_pem_chain((n / "blackwell/blackwell_coco_certs.txt").read_bytes()),
    }
    for name in ("gpu", "switch"):
        doc = json.loads((n / f"ppcie/{name}_evidence.json").read_text())
        out[f"ppcie_{name}0"] = load_pem_chain(base64.b64decode(doc[0]["certificate"]))
    return out


@cache
def _chain_cache() -> Any:
    from attest.x509chain import ChainCache

    return ChainCache()


def _spdm_parse(data: bytes, _seed: str) -> Any:
    from attest.nvidia.spdm import parse_report

    return parse_report(data)


def _device_parse(data: bytes, seed: str) -> Any:
    from attest.nvidia.opaque import DeviceKind, parse_device_report

    kind = DeviceKind.SWITCH if "switch" in seed else DeviceKind.GPU
    return parse_device_report(data, kind)


def _device_verify(data: bytes, seed: str) -> Any:
    from attest.nvidia.device import verify_device
    from attest.nvidia.evidence import Arch, DeviceEvidence

    arch = {"blackwell": Arch.BLACKWELL, "ppcie_switch0": Arch.LS10}.get(seed, Arch.HOPPER)
    ev = DeviceEvidence(index=0, arch=arch, report_bytes=data, chain=_device_chains()[seed])
    return verify_device(ev, at=TODAY, expected_nonce=None, chain_cache=_chain_cache())


def _evidence_load(data: bytes, _seed: str) -> Any:
    from attest.nvidia.evidence import load_evidence

    return load_evidence(data)


def _evidence_verify(data: bytes, _seed: str) -> Any:
    from attest.nvidia.device import verify_device
    from attest.nvidia.evidence import load_evidence

    return tuple(
        verify_device(ev, at=TODAY, expected_nonce=None, chain_cache=_chain_cache())
        for ev in load_evidence(data)
    )


def _pem_load(data: bytes, _seed: str) -> Any:
    from attest.x509chain import load_pem_chain

    return load_pem_chain(data)


def _pem_verify(data: bytes, _seed: str) -> Any:
    from attest.nvidia.device import verify_device_chain
    from attest.x509chain import load_pem_chain

    return verify_device_chain(load_pem_chain(data), at=TODAY)


def _amd_load(data: bytes, _seed: str) -> Any:
    from attest.snp.verify import load_amd_certificates

    return load_amd_certificates(data)


@cache
def _snp_context() -> dict[str, tuple[Any, ...]]:
    from attest.snp.verify import load_amd_certificates

    snp = corpus.CPU / "snp"

    def certs(*names: str) -> tuple[Any, ...]:
        out: list[Any] = []
        for name in names:
            out.extend(load_amd_certificates((snp / name).read_bytes()))
        return tuple(out)

    return {
        "virtee_milan": certs("virtee-sev/vcek_milan.der", "virtee-sev/cert_chain_milan"),
        "gsg_milan": certs("go-sev-guest/vcek.testcer", "go-sev-guest/ask_ark_milan.pem"),
    }


def _amd_verify(data: bytes, seed: str) -> Any:
    """ASK/ARK PEM from the mutant, VCEK and report fixed: the chain must not verify if changed."""
    from attest.snp.verify import load_amd_certificates, verify_snp_report

    vcek = _snp_context()["virtee_milan"][0]
    chain = load_amd_certificates(data)
    report = corpus.seeds("snp")[0].data
    return verify_snp_report(report, (vcek, *chain), at=TODAY)


def _snp_parse(data: bytes, _seed: str) -> Any:
    from attest.snp.report import parse_report

    return parse_report(data)


def _snp_verify(data: bytes, seed: str) -> Any:
    from attest.snp.verify import verify_snp_report

    return verify_snp_report(data, _snp_context()[seed], at=TODAY)


def _tdx_parse(data: bytes, _seed: str) -> Any:
    from attest.tdx.quote import parse_quote

    return parse_quote(data)


_TDX_AT = {
    "dcap_v4": DCAP_AT,
    "outdated_v5": OUTDATED_AT,
    "spr_e4_v4": datetime(2023, 6, 18, 9, 42, 58, tzinfo=UTC),
    "v5_sample": datetime(2026, 2, 1, 15, 49, 26, tzinfo=UTC),
}


def _tdx_verify_signatures(data: bytes, seed: str) -> Any:
    from attest.tdx.quote import parse_quote
    from attest.tdx.verify import verify_quote_signatures

    return verify_quote_signatures(
        parse_quote(data), at=_TDX_AT.get(seed, DCAP_AT), chain_cache=_chain_cache()
    )


@cache
def _tdx_collaterals() -> dict[str, Any]:
    from attest.tdx.collateral import parse_collateral_json

    d = corpus.CPU / "tdx/dcap-qvl"
    return {
        "dcap_v4": parse_collateral_json((d / "tdx_quote_collateral.json").read_bytes()),
        "outdated_v5": parse_collateral_json(
            (d / "tdx_quote_outdated_collateral.json").read_bytes()
        ),
    }


def _tdx_verify_full(data: bytes, seed: str) -> Any:
    from attest.tdx.quote import parse_quote
    from attest.tdx.verify import verify_quote

    return verify_quote(
        parse_quote(data),
        _tdx_collaterals().get(seed, _tdx_collaterals()["dcap_v4"]),
        at=_TDX_AT[seed],
        chain_cache=_chain_cache(),
    )


def _collateral_parse(data: bytes, _seed: str) -> Any:
    from attest.tdx.collateral import parse_collateral_json

    return parse_collateral_json(data)


def _collateral_verify(data: bytes, _seed: str) -> Any:
    from attest.tdx.collateral import parse_collateral_json
    from attest.tdx.verify import verify_collateral

    c = parse_collateral_json(data)
    verify_collateral(c, at=DCAP_AT, chain_cache=_chain_cache())
    return c


def _collateral_fp(c: Any) -> Any:
    parts = [
        c.tcb_info.signed_bytes,
        c.tcb_info.signature,
        c.qe_identity.signed_bytes,
        c.qe_identity.signature,
        c.pck_crl.der,
        c.root_ca_crl.der,
    ]
    for chain in (c.pck_crl_issuer_chain, c.tcb_info_issuer_chain, c.qe_identity_issuer_chain):
        parts.extend(x.tbs_certificate_bytes for x in chain)
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def _pcs_parse(data: bytes, seed: str) -> Any:
    from attest.tdx.collateral import parse_qe_identity_response, parse_tcb_info_response

    if seed == "qe_identity":
        return parse_qe_identity_response(data)
    return parse_tcb_info_response(data)


def _policy_load(data: bytes, _seed: str) -> Any:
    from attest.policy import load_policy

    return load_policy(data)


def _rp_policy_load(data: bytes, _seed: str) -> Any:
    from attest.nvidia.rp_policy import load_nvidia_policy

    return load_nvidia_policy(data)


def _bundle_load(data: bytes, _seed: str) -> Any:
    from attest.bundle import load_bundle

    return load_bundle(data)


def _rim_parse(data: bytes, _seed: str) -> Any:
    from attest.nvidia.rim_parse import parse_rim

    return parse_rim(data)


def _rim_verify(data: bytes, _seed: str) -> Any:
    from attest.nvidia.rim_parse import parse_rim
    from attest.nvidia.rim_verify import verify_rim

    return verify_rim(parse_rim(data), at=RIM_ERA, chain_cache=_chain_cache()).rim


def _rim_fp(rim: Any) -> Any:
    return (rim.name, rim.version, rim.kind, repr(rim.measurements), repr(rim.body))


def _ocsp_context(seed: str) -> dict[str, Any]:
    from tests.revocation.pki import NONCE, load_pki

    pki = load_pki()
    return {
        "cert": pki.leaf,
        "issuer": pki.intermediate,
        "expected_nonce": NONCE if seed == "nonce" else None,
    }


def _ocsp_check(data: bytes, seed: str) -> Any:
    from attest.revocation.ocsp import check_ocsp_response

    return check_ocsp_response(data, at=TODAY, **_ocsp_context(seed))


def _ocsp_fp(check: Any) -> Any:
    """What a passing OCSP verdict vouches for: the signed response data, its signature, and
    each embedded certificate's signed part and signature. (Byte-level malleability of the
    unsigned encoding is pinned separately: tests/regressions/test_T_REVOCATION_*.)"""
    from cryptography.x509 import ocsp

    resp = ocsp.load_der_ocsp_response(check.response_der)
    certs = tuple((c.tbs_certificate_bytes, c.signature) for c in resp.certificates)
    return (resp.tbs_response_bytes, resp.signature, certs)


def _ocsp_stapled(data: bytes, _seed: str) -> Any:
    from attest.revocation.ocsp import StapledOcsp
    from tests.revocation.pki import load_pki

    pki = load_pki()
    return StapledOcsp([data]).response_for(pki.leaf, pki.intermediate)


def _ear_verify(data: bytes, seed: str) -> Any:
    import json

    from attest.ear import public_key_from_jwk, verify_ear

    token = data.decode("utf-8", "replace")
    if seed.startswith("veraison"):
        vec = json.loads((corpus.AUDIT / "ear/veraison_ear_jwts.json").read_text())
        key = public_key_from_jwk(vec["testPKey_jwk"])
        return verify_ear(token, key, at=TODAY, require_lessee_profile=False)
    return verify_ear(
        token,
        corpus.ear_test_key().public_key(),
        at=EAR_AT,
        expected_nonce=b"\x07" * 32,
        expected_enclave_key=b"\x02" + b"\x05" * 32,
    )


def _entry_decode(data: bytes, _seed: str) -> Any:
    from attest.log.entry import decode_entry

    return decode_entry(data)


def _note_parse(data: bytes, _seed: str) -> Any:
    from attest.log.note import parse_note

    return parse_note(data)


@cache
def _note_keys() -> dict[str, tuple[Any, tuple[Any, ...]]]:
    from attest.log.keys import load_verifier
    from tests.log.helpers import LOG_SIGNER, WITNESS

    heads = corpus.note_seeds_info()
    lessee = (LOG_SIGNER.verifier(), (WITNESS.verifier(),))
    return {
        "sumdb": (load_verifier(heads["sumdb"]["vkey"]), ()),
        "static_ct_rome": (load_verifier(heads["static_ct_rome"]["vkey"]), ()),
        "lessee_checkpoint": lessee,
        "lessee_cosigned": lessee,
    }


def _checkpoint_verify(data: bytes, seed: str) -> Any:
    from attest.log.checkpoint import verify_checkpoint

    key, witnesses = _note_keys()[seed]
    return verify_checkpoint(data, key, witnesses=witnesses).checkpoint


def _checkpoint_fp(cp: Any) -> Any:
    return (cp.origin, cp.size, cp.root_hash, cp.extensions)


@cache
def _sealed_context() -> dict[str, Any]:
    import json

    exp = json.loads((corpus.VECTORS / "sealed/expected.json").read_text())
    return {
        "dek": bytes.fromhex(exp["dek_hex"]),
        "model_id": exp["model_id"],
        "model_version": exp["model_version"],
    }


def _shard_header(data: bytes, _seed: str) -> Any:
    from sealing.weights._format import parse_shard_header, peek_header_length

    return parse_shard_header(data[: peek_header_length(data[:16])])


def _shard_open(data: bytes, _seed: str) -> Any:
    from sealing.weights.recipes import open_bytes

    open_bytes(data, **_sealed_context())
    return data  # the fingerprint is the sealed file: nothing but the original may open


def _manifest_parse(data: bytes, _seed: str) -> Any:
    from sealing.weights._manifest import parse_manifest

    return parse_manifest(data)


def _manifest_open(data: bytes, _seed: str) -> Any:
    from sealing.weights._manifest import open_manifest

    return open_manifest(data, **_sealed_context())


@cache
def _record_openers() -> dict[str, tuple[Any, int]]:
    from sealing.stream.response import RecordOpener, ResponseKeys

    _, rec = corpus.stream_vectors()
    out: dict[str, tuple[Any, int]] = {}
    for case in rec:
        keys = ResponseKeys(bytes.fromhex(case["key"]), bytes.fromhex(case["base_nonce"]))
        for seq in range(len(case["records"])):
            out[f"{case['name']}#{seq}"] = (RecordOpener(keys, case["record_size"]), seq)
    return out


def _record_open(data: bytes, seed: str) -> Any:
    opener, seq = _record_openers()[seed]
    opener.open(seq, data)
    return data  # the fingerprint is the record: nothing but the original may open


def _head_decode(data: bytes, _seed: str) -> Any:
    from sealing.stream.response import decode_head

    return decode_head(data)


def _request_header(data: bytes, _seed: str) -> Any:
    from sealing.stream.request import parse_request_header

    return parse_request_header(data)


def _request_open(data: bytes, seed: str) -> Any:
    from sealing.stream.request import open_request

    req, _ = corpus.stream_vectors()
    suite = next(c["suite"] for c in req if c["name"] == seed)
    return open_request(corpus.stream_key(suite), data)


def _bundle_decode(data: bytes, _seed: str) -> Any:
    from sealing.stream.bundle import KeyBundle

    return KeyBundle.decode(data)


def _log_proof_decode(data: bytes, _seed: str) -> Any:
    from attest.log.entryproof import decode_entry_proof

    return decode_entry_proof(data)


def _log_proof_verify(data: bytes, _seed: str) -> Any:
    from attest.log.entryproof import decode_entry_proof
    from tests.log.helpers import LOG_SIGNER

    proof = decode_entry_proof(data)
    return proof, proof.verify(LOG_SIGNER.verifier())


def _log_proof_fp(result: Any) -> Any:
    proof, entry = result
    return (proof.index, proof.tree_size, entry.raw)


def _keyrelease_open(data: bytes, _seed: str) -> Any:
    from sealing.hpke_suite import SuiteId
    from sealing.keyrelease import open_data_key

    key = corpus.stream_key(int(SuiteId.X25519_SHA256_AES256GCM))
    open_data_key(key, data, **corpus.KEYRELEASE_CONTEXT)
    return data  # the fingerprint is the blob: nothing but the original may open


@cache
def _pb_classes() -> tuple[Any, ...]:
    from agent.rpc.v1 import broker_pb2, enclave_pb2, evidence_pb2, log_pb2

    return tuple(
        getattr(mod, name)
        for mod in (broker_pb2, enclave_pb2, evidence_pb2, log_pb2)
        for name in sorted(mod.DESCRIPTOR.message_types_by_name)
    )


def _pb_decode(data: bytes, _seed: str) -> Any:
    """Decode as every message type: each must yield a message or raise DecodeError."""
    out = []
    for cls in _pb_classes():
        try:
            out.append(cls.FromString(data))
        except DecodeError:
            out.append(None)
    if all(m is None for m in out):
        raise DecodeError("no message type decodes these bytes")
    return out


#: Request message -> the service-edge conversion the broker runs on it (agent/rpc/convert.py).
_CONVERTERS = {
    "broker_pb2.AttestRequest": "attest_request_from_proto",
    "broker_pb2.ReleaseKeyRequest": "release_request_from_proto",
    "broker_pb2.RegisterModelRequest": "register_request_from_proto",
    "broker_pb2.ChallengeRequest": "challenge_request_from_proto",
    "evidence_pb2.EvidenceBundle": "bundle_from_proto",
    "evidence_pb2.LogProof": "log_proof_from_proto",
}
#: Size bound handed to ``convert.decode`` (the server's own limit is its configuration).
RPC_DECODE_LIMIT = 16 * 1024 * 1024


def _rpc_convert(data: bytes, seed: str) -> Any:
    """Bytes -> bounded decode (no unknown fields) -> domain conversion, for the seed's type."""
    from agent.rpc import convert
    from agent.rpc.v1 import broker_pb2, evidence_pb2

    label = seed if seed in _CONVERTERS else "broker_pb2.AttestRequest"
    mod = {"broker_pb2": broker_pb2, "evidence_pb2": evidence_pb2}[label.split(".")[0]]
    msg = convert.decode(getattr(mod, label.split(".")[1]), data, limit=RPC_DECODE_LIMIT)
    return getattr(convert, _CONVERTERS[label])(msg)


def _audit_entries(data: bytes, _seed: str) -> Any:
    from agent.audit.bundle import parse_entries

    return parse_entries(data)


def _raw(r: Any) -> Any:
    return r.raw


TYPED = (InputError, VerificationError)


TARGETS: tuple[Target, ...] = (
    Target("spdm.parse_report", "T-EVIDENCE-03", "spdm", _spdm_parse, (ParseError,),
           "parses", atheris=True),
    Target("nvidia.parse_device_report", "T-EVIDENCE-03", "spdm", _device_parse,
           (ParseError,), "parses (SPDM + opaque TLVs)"),
    Target("nvidia.verify_device", "T-EVIDENCE-04", "spdm", _device_verify, TYPED,
           "chain + signature + FWID pass", fingerprint=lambda r: r.report.raw),
    Target("nvidia.load_evidence", "T-EVIDENCE-03", "nv_evidence_json", _evidence_load,
           (InputError,), "decodes"),
    Target("nvidia.load_evidence+verify_device", "T-EVIDENCE-04",
           "nv_evidence_json", _evidence_verify, TYPED, "every device verifies",
           fingerprint=lambda rs: frozenset(r.report.raw for r in rs), cost=4),
    Target("x509chain.load_pem_chain", "T-EVIDENCE-03", "pem_chain", _pem_load,
           (InputError,), "decodes", strict_framing=False),
    Target("nvidia.verify_device_chain", "T-EVIDENCE-04", "pem_chain", _pem_verify,
           TYPED, "chains to the pinned device root",
           fingerprint=lambda v: tuple(c.tbs_certificate_bytes for c in v.certs),
           strict_framing=False),
    Target("snp.load_amd_certificates+verify", "T-EVIDENCE-04", "amd_pem", _amd_verify,
           TYPED, "report verifies through the mutated ASK/ARK",
           fingerprint=lambda v: tuple(c.tbs_certificate_bytes for c in v.chain.certs),
           strict_framing=False, baseline=("ask_ark_milan",), cost=2),
    Target("snp.load_amd_certificates", "T-EVIDENCE-03", "amd_pem", _amd_load,
           (InputError,), "decodes", strict_framing=False),
    Target("nvidia.parse_rim", "T-EVIDENCE-03", "rim", _rim_parse, (InputError,), "parses",
           must_reject=("xxe", "billion", "quadratic", "internal-entity", "external-dtd",
                        "parameter-entity", "xinclude", "empty-doctype")),
    Target("nvidia.verify_rim", "T-EVIDENCE-05", "rim", _rim_verify, TYPED,
           "XML-DSig + signer chain pass at 2024-06-01", fingerprint=_rim_fp, cost=3,
           must_reject=("xxe", "billion", "quadratic", "internal-entity", "external-dtd",
                        "parameter-entity", "xinclude", "empty-doctype")),
    Target("ocsp.check_ocsp_response", "T-DOWNGRADE-03", "ocsp", _ocsp_check, (),
           "verdict ok (good)", fingerprint=_ocsp_fp, passed=lambda r: r.ok,
           baseline=("good", "delegated", "delegated_ed25519", "nonce", "sha256_cert_id"),
           atheris=True),
    Target("ocsp.StapledOcsp", "T-DOWNGRADE-03", "ocsp", _ocsp_stapled, (InputError,),
           "indexes", strict_framing=True),
    Target("snp.parse_report", "T-EVIDENCE-03", "snp", _snp_parse, (ParseError,),
           "parses", atheris=True),
    Target("snp.verify_snp_report", "T-EVIDENCE-04", "snp", _snp_verify, TYPED,
           "signature + VCEK chain to the ARK pass", fingerprint=lambda v: v.report.raw),
    Target("tdx.parse_quote", "T-EVIDENCE-03", "tdx_quote", _tdx_parse, (ParseError,),
           "parses", atheris=True),
    Target("tdx.verify_quote_signatures", "T-EVIDENCE-04", "tdx_quote",
           _tdx_verify_signatures, TYPED, "QE/PCK/quote signatures pass",
           fingerprint=lambda s: s.quote.raw),
    Target("tdx.verify_quote", "T-DOWNGRADE-02", "tdx_quote", _tdx_verify_full, TYPED,
           "quote + collateral + TCB pass", fingerprint=lambda v: v.quote.raw,
           baseline=("dcap_v4", "outdated_v5"), cost=3),
    Target("tdx.parse_collateral_json", "T-EVIDENCE-03", "tdx_collateral",
           _collateral_parse, (InputError,), "parses"),
    Target("tdx.verify_collateral", "T-DOWNGRADE-02", "tdx_collateral",
           _collateral_verify, TYPED, "signatures, chains, CRLs pass",
           fingerprint=_collateral_fp, cost=3),
    Target("tdx.parse_pcs_response", "T-EVIDENCE-03", "pcs_response", _pcs_parse,
           (InputError,), "parses"),
    Target("policy.load_policy", "T-DOWNGRADE-01", "policy", _policy_load, (InputError,),
           "loads"),
    Target("nvidia.load_nvidia_policy", "T-DOWNGRADE-01", "rp_policy", _rp_policy_load,
           (InputError,), "loads"),
    Target("bundle.load_bundle", "T-EVIDENCE-03", "bundle", _bundle_load, (InputError,),
           "loads"),
    Target("ear.verify_ear", "T-RESULT-01", "ear", _ear_verify, TYPED,
           "signature + claims pass", fingerprint=repr, strict_framing=False),
    Target("log.decode_entry", "T-LOG-01", "log_entry", _entry_decode, (ParseError,),
           "decodes", atheris=True),
    Target("log.parse_note", "T-LOG-01", "note", _note_parse, (ParseError,), "splits",
           strict_framing=False),
    Target("log.verify_checkpoint", "T-LOG-01", "note", _checkpoint_verify, TYPED,
           "log signature (and witnesses) pass", fingerprint=_checkpoint_fp,
           strict_framing=False),
    Target("sealing.parse_shard_header", "T-WEIGHTS-02", "sealed_shard", _shard_header,
           (InputError,), "parses", strict_framing=False, atheris=True),
    Target("sealing.open_bytes", "T-WEIGHTS-02", "sealed_shard", _shard_open, TYPED,
           "decrypts", fingerprint=lambda r: r),
    Target("sealing.parse_manifest", "T-WEIGHTS-02", "sealed_manifest",
           _manifest_parse, (InputError,), "parses"),
    Target("sealing.open_manifest", "T-WEIGHTS-02", "sealed_manifest", _manifest_open,
           TYPED, "authenticates", fingerprint=_raw),
    Target("stream.RecordOpener.open", "T-STREAM-02", "stream_record", _record_open,
           TYPED, "opens", fingerprint=lambda r: r, atheris=True),
    Target("stream.parse_request_header", "T-STREAM-02", "stream_request",
           _request_header, (InputError,), "parses", strict_framing=False),
    Target("stream.open_request", "T-STREAM-02", "stream_request", _request_open, TYPED,
           "opens", fingerprint=_raw),
    Target("stream.KeyBundle.decode", "T-STREAM-03", "key_bundle", _bundle_decode,
           (InputError,), "decodes", atheris=True),
    Target("log.decode_entry_proof", "T-STREAM-03", "log_proof", _log_proof_decode,
           (ParseError,), "decodes", atheris=True),
    Target("log.EntryProof.verify", "T-STREAM-03", "log_proof", _log_proof_verify, TYPED,
           "checkpoint signature + inclusion pass, entry decodes", fingerprint=_log_proof_fp),
    Target("keyrelease.open_data_key", "T-RELEASE-01", "keyrelease", _keyrelease_open,
           TYPED, "opens", fingerprint=lambda r: r),
    Target("rpc.convert.*_from_proto", "T-RPC-01", "protobuf", _rpc_convert,
           (InputError,), "converts to the domain type", strict_framing=False,
           baseline=tuple(_CONVERTERS)),
    Target("audit.parse_entries", "T-LOG-01", "audit_entries", _audit_entries,
           (ParseError,), "splits", strict_framing=False),
    Target("rpc.v1 FromString", "T-RPC-01", "protobuf", _pb_decode, (DecodeError,),
           "decodes as some message type", strict_framing=False, atheris=True),
)  # fmt: skip

BY_NAME = {t.name: t for t in TARGETS}

#: Base classes every typed error derives from (for the "non-typed exception" message).
TYPED_BASES: tuple[type[BaseException], ...] = (LesseeError, DecodeError)
