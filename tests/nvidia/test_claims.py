"""Claims carry NVIDIA's 3.0 names (compared with NVIDIA's own examples) and meanings."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from attest.nvidia.claims import (
    ChainClaim,
    DeviceChecks,
    Failure,
    RimChecks,
    gpu_claims,
    switch_claims,
)
from attest.nvidia.opaque import DeviceKind
from tests.conftest import NVIDIA

EXAMPLES = NVIDIA / "sdk_claims_examples"
#: Token metadata NVIDIA adds around the claims (issuer, times, id, warnings), not claims we make.
TOKEN_KEYS = {"iss", "nbf", "exp", "iat", "jti", "x-nvidia-attestation-warning"}
OURS = {"x-nvidia-ver", "x-lessee-fwid-binding", "x-lessee-revocation-mode"}

GOOD_CHAIN = ChainClaim("valid", "good", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
GOOD_RIM = RimChecks("id", True, True, True, GOOD_CHAIN, True, True)


def _all_good(kind: DeviceKind) -> DeviceChecks:
    return DeviceChecks(
        kind=kind,
        arch_check=True,
        parsed=True,
        nonce_match=True,
        signature_verified=True,
        cert_chain=GOOD_CHAIN,
        fwid="match",
        driver_version="570.44",
        vbios_version="96.00.9f.00.01",
        driver_rim=GOOD_RIM,
        vbios_rim=GOOD_RIM,
        index_no_conflict=True,
        measurements_match=True,
        nonce="931d",
        hwmodel="GH100 A01 GSP BROM",
        ueid="1",
        oemid="5703",
        revocation_mode="online",
    )


def _example(name: str) -> dict[str, object]:
    doc = json.loads((EXAMPLES / name).read_text())
    assert isinstance(doc, dict)
    return doc


def test_gpu_claim_names_match_nvidia_3_0() -> None:
    ours = gpu_claims(_all_good(DeviceKind.GPU))
    nvidia = _example("gpu_detached_granular_claims_remote.json")
    assert set(ours) - OURS == set(nvidia) - TOKEN_KEYS
    for key, value in nvidia.items():
        if key in TOKEN_KEYS or key in ("eat_nonce", "ueid", "x-nvidia-gpu-driver-version"):
            continue
        if isinstance(value, dict):
            got = ours[key]
            assert isinstance(got, dict) and set(got) == set(value)
            assert got["x-nvidia-cert-status"] == value["x-nvidia-cert-status"]
        elif key.endswith("-cert-chain") is False and key not in ("hwmodel", "oemid"):
            assert ours[key] == value, key


def test_switch_claim_names_match_nvidia_3_0() -> None:
    ours = switch_claims(_all_good(DeviceKind.SWITCH))
    nvidia = _example("switch_detached_granular_claims_remote.json")
    # NVIDIA's remote switch example also carries oemid; the local one does not
    assert set(ours) - OURS == set(nvidia) - TOKEN_KEYS - {"oemid"}
    assert ours["x-nvidia-switch-bios-version"] == "96.00.9F.00.01"


def test_expiration_format_matches_nvidia() -> None:
    claim = GOOD_CHAIN.to_claim()
    nvidia = _example("gpu_detached_granular_claims_remote.json")
    chain = nvidia["x-nvidia-gpu-attestation-report-cert-chain"]
    assert isinstance(chain, dict)
    assert claim == {**chain, "x-nvidia-cert-revocation-reason": None}


def test_v4_policy_is_satisfied_by_all_good_claims() -> None:
    policy = json.loads((NVIDIA / "policies/local_NVGPULocalv4PolicyExample.json").read_text())
    ours = gpu_claims(_all_good(DeviceKind.GPU))
    for key, want in policy["authorization-rules"]["detached-claims"].items():
        got = ours[key]
        if isinstance(want, dict):
            assert isinstance(got, dict)
            assert all(got[k] == v for k, v in want.items()), key
        else:
            assert got == want, key


def test_failed_measurements_drop_secboot() -> None:
    c = _all_good(DeviceKind.GPU)
    bad = DeviceChecks(**{**c.__dict__, "measurements_match": False})
    claims = gpu_claims(bad)
    assert claims["measres"] == "fail"
    assert "secboot" not in claims and "dbgstat" not in claims


def test_absent_fwid_is_nvidia_true_but_named() -> None:
    c = DeviceChecks(**{**_all_good(DeviceKind.GPU).__dict__, "fwid": "absent-in-report"})
    claims = gpu_claims(c)
    assert claims["x-nvidia-gpu-attestation-report-cert-chain-fwid-match"] is True
    assert claims["x-lessee-fwid-binding"] == "absent-in-report"
    mismatch = DeviceChecks(**{**c.__dict__, "fwid": "mismatch"})
    assert gpu_claims(mismatch)["x-nvidia-gpu-attestation-report-cert-chain-fwid-match"] is False


def test_failure_json() -> None:
    f = Failure("measurement[7]", [b"\x01"], b"\x02", "why")
    assert f.to_json() == {
        "field": "measurement[7]",
        "expected": ["01"],
        "actual": "02",
        "detail": "why",
    }
    assert "measurement[7]" in str(f) and "why" in str(f)
