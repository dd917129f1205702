"""The lessee policy model and NVIDIA's relying-party policy files."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from attest.errors import InputError
from attest.nvidia.rp_policy import evaluate_device, evaluate_overall, load_nvidia_policy
from attest.policy import Policy, SnpPolicy, TdxPolicy, load_policy
from tests.conftest import NVIDIA

MEAS = "ab" * 48


def _policy(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "prod",
        "cpu_tees": ["snp"],
        "snp": {"allowed_measurements": [MEAS]},
    }
    base.update(kw)
    return base


def test_safe_defaults() -> None:
    p = load_policy(json.dumps(_policy()))
    assert p.snp is not None
    assert not p.snp.unsafe_allow_debug and p.snp.allowed_vmpls == (0,)
    assert p.gpu.allowed_ocsp_statuses == ("good",)
    assert not p.gpu.unsafe_skip_rim_match and not p.gpu.unsafe_allow_devtools
    assert p.missing_revocation.value == "reject"
    assert p.roots.extra_trusted_sha256 == ()
    assert p.unsafe_settings() == []
    assert p.digest.startswith("sha256:") and len(p.digest) == 71


@pytest.mark.parametrize(
    "doc,needle",
    [
        (_policy(bogus=1), "bogus"),
        (_policy(snp={}), "allowed_measurements is required"),
        (_policy(cpu_tees=["tdx"]), "'tdx' section is missing"),
        (_policy(cpu_tees=[]), "cpu_tees"),
        (_policy(snp={"allowed_measurements": ["zz"]}), "allowed_measurements"),
        (_policy(gpu={"allowed_ocsp_statuses": ["revoked"]}), "allowed_ocsp_statuses"),
        (
            _policy(snp={"allowed_measurements": [MEAS], "unsafe_allow_debug": "yes"}),
            "unsafe_allow_debug",
        ),
        # Driver versions are decimal, VBIOS versions hex: a minimum that could never compare
        # is refused when the policy loads, not at every GPU's appraisal.
        (_policy(gpu={"minimum_driver_version": "545.0a"}), "minimum_driver_version"),
        (_policy(gpu={"minimum_driver_version": "545..0"}), "minimum_driver_version"),
        (_policy(gpu={"minimum_vbios_version": "96.00.1g"}), "minimum_vbios_version"),
        (_policy(gpu={"minimum_vbios_version": "1.2.3.4.5.6.7.8.9"}), "minimum_vbios_version"),
    ],
)
def test_strict_errors_name_the_field(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        load_policy(json.dumps(doc))


def test_version_minimums_in_their_notations_load() -> None:
    p = load_policy(
        json.dumps(
            _policy(
                gpu={"minimum_driver_version": "535.104.05", "minimum_vbios_version": "96.00.1A.00"}
            )
        )
    )
    assert p.gpu.minimum_driver_version == "535.104.05"
    assert p.gpu.minimum_vbios_version == "96.00.1A.00"


def test_unsafe_switches_are_listed() -> None:
    p = load_policy(
        json.dumps(
            _policy(
                snp={"unsafe_any_measurement": True, "unsafe_allow_debug": True},
                gpu={"unsafe_skip_rim_match": True},
                missing_revocation="warn",
            )
        )
    )
    assert p.unsafe_settings() == [
        "snp.unsafe_any_measurement",
        "snp.unsafe_allow_debug",
        "gpu.unsafe_skip_rim_match",
        "missing_revocation=warn",
    ]


def test_digest_changes_with_content_and_policy_is_frozen() -> None:
    a = load_policy(json.dumps(_policy()))
    b = load_policy(json.dumps(_policy(name="other")))
    assert a.digest != b.digest
    assert a.digest == load_policy(json.dumps(_policy())).digest
    with pytest.raises(ValidationError):
        a.name = "x"  # type: ignore[misc]
    assert isinstance(a, Policy)


def test_version_is_exactly_the_json_integer_one() -> None:
    """``Literal[1]`` matched by equality, and ``True == 1.0 == 1``: ``true`` and ``1.0`` loaded
    as version 1. Only the integer 1 does now, and it (or leaving it out) digests as before."""
    implicit = load_policy(json.dumps(_policy()))
    explicit = load_policy(json.dumps(_policy(version=1)))
    assert explicit.version == 1 and explicit.digest == implicit.digest
    for raw in ("true", "1.0", "1e0", '"1"', "2", "null"):
        doc = json.dumps(_policy())[:-1] + f', "version": {raw}}}'
        with pytest.raises(InputError, match="version") as e:
            load_policy(doc)
        if raw in ("true", "1.0", "1e0"):
            assert "must be the integer 1" in str(e.value)


def test_collateral_age_is_bounded_so_the_appraisal_cannot_overflow() -> None:
    """Unbounded, 10**14 s loaded and then overflowed ``timedelta`` inside appraise_bundle
    (OverflowError for every TDX bundle). Every freshness field feeds a timedelta; each is
    bounded both ways so a policy that loads can be appraised with."""
    from datetime import timedelta

    from attest.policy import MAX_COLLATERAL_AGE_SECONDS, Freshness

    for value in (10**14, MAX_COLLATERAL_AGE_SECONDS + 1):
        with pytest.raises(InputError, match=r"max_collateral_age_seconds.*less than or equal"):
            load_policy(json.dumps(_policy(freshness={"max_collateral_age_seconds": value})))
    edge = {"max_collateral_age_seconds": MAX_COLLATERAL_AGE_SECONDS}
    assert load_policy(json.dumps(_policy(freshness=edge))).freshness == Freshness(**edge)
    for name, info in Freshness.model_fields.items():
        bounds = {type(m).__name__: m for m in info.metadata}
        assert {"Ge", "Le"} <= set(bounds), name
        timedelta(seconds=bounds["Le"].le)  # the largest value that loads is a timedelta


@pytest.mark.parametrize("vmpls", [[-1], [4], [0, 99_999_999_999_999], [True]])
def test_vmpls_are_levels_0_to_3(vmpls: list[object]) -> None:
    """A report's VMPL is 0..3; a policy listing anything else is a typo, refused at load."""
    snp = {"allowed_measurements": [MEAS], "allowed_vmpls": vmpls}
    with pytest.raises(InputError, match="allowed_vmpls"):
        load_policy(json.dumps(_policy(snp=snp)))
    ok = {"allowed_measurements": [MEAS], "allowed_vmpls": [0, 1, 2, 3]}
    snp_policy = load_policy(json.dumps(_policy(snp=ok))).snp
    assert snp_policy is not None and snp_policy.allowed_vmpls == (0, 1, 2, 3)


def test_non_json_and_oversized() -> None:
    with pytest.raises(InputError):
        load_policy(b"{")
    with pytest.raises(InputError):
        load_policy(b" " * 300_000)


GRANULAR = json.loads(
    (NVIDIA / "sdk_claims_examples/gpu_detached_granular_claims_local.json").read_text()
)


@pytest.mark.parametrize("name", sorted(p.name for p in (NVIDIA / "policies").glob("*.json")))
def test_all_shipped_nvidia_policies_load_or_are_refused_clearly(name: str) -> None:
    data = (NVIDIA / "policies" / name).read_bytes()
    version = json.loads(data)["version"]
    if version in ("3.0", "4.0"):
        pol = load_nvidia_policy(data)
        assert pol.kind == ("switch" if "Switch" in name else "gpu")
    else:
        with pytest.raises(InputError, match="not supported"):
            load_nvidia_policy(data)


def test_v4_policy_passes_nvidia_example_claims() -> None:
    pol = load_nvidia_policy(
        (NVIDIA / "policies/local_NVGPULocalv4PolicyExample.json").read_bytes()
    )
    assert evaluate_device(pol, "gpu0", GRANULAR) == []
    assert evaluate_overall(pol, all_devices_passed=True) == []
    assert [f.field for f in evaluate_overall(pol, all_devices_passed=False)] == [
        "x-nvidia-overall-att-result"
    ]


def test_v4_policy_reports_every_failed_claim() -> None:
    pol = load_nvidia_policy(
        (NVIDIA / "policies/local_NVGPULocalv4PolicyExample.json").read_bytes()
    )
    bad = dict(GRANULAR)
    bad["measres"] = "fail"
    bad["x-nvidia-gpu-driver-rim-cert-chain"] = dict(
        bad["x-nvidia-gpu-driver-rim-cert-chain"], **{"x-nvidia-cert-ocsp-status": "revoked"}
    )
    del bad["x-nvidia-gpu-arch-check"]
    found = {(f.field, f.actual) for f in evaluate_device(pol, "gpu0", bad)}
    assert found == {
        ("measres", "fail"),
        ("x-nvidia-gpu-driver-rim-cert-chain.x-nvidia-cert-ocsp-status", "revoked"),
        ("x-nvidia-gpu-arch-check", None),
    }


def test_v3_policy_names_translate_to_claims_3() -> None:
    pol = load_nvidia_policy(
        (NVIDIA / "policies/remote_v3_NVGPURemotePolicyExample.json").read_bytes()
    )
    assert evaluate_device(pol, "gpu0", GRANULAR) == []
    bad = dict(GRANULAR)
    bad["x-nvidia-gpu-vbios-rim-cert-chain"] = {"x-nvidia-cert-status": "expired"}
    assert [f.field for f in evaluate_device(pol, "gpu0", bad)] == [
        "x-nvidia-gpu-vbios-rim-cert-validated"
    ]


def test_nvidia_policy_strictness() -> None:
    with pytest.raises(InputError):
        load_nvidia_policy(
            b'{"version":"4.0","authorization-rules":{"type":"HS256","detached-claims":{"measres":"success"}}}'
        )
    with pytest.raises(InputError):
        load_nvidia_policy(
            b'{"version":"4.0","authorization-rules":{"type":"JWT","detached-claims":{}}}'
        )
    with pytest.raises(InputError):
        load_nvidia_policy(
            b'{"version":"4.0","authorization-rules":{"type":"JWT","detached-claims":{"measres":[1]}}}'
        )


# Digests of TDX policies computed before the TD_ATTRIBUTES fields existed: an upgrade must not
# change them (results and logged decisions name their policy by this digest).
_DIGESTS_BEFORE_TD_ATTRIBUTE_FIELDS = [
    (
        {"name": "t", "cpu_tees": ["tdx"], "tdx": {"allowed_mrtd": ["00" * 48]}},
        "sha256:8e3d558af1969b62fbbc9955746afb265f71275c2d67470b21063dc8a8294aff",
    ),
    (
        {
            "name": "t",
            "cpu_tees": ["tdx"],
            "tdx": {"unsafe_any_mrtd": True, "accepted_tcb_statuses": ["UpToDate", "OutOfDate"]},
        },
        "sha256:67d867d8d4209e20a1db5938e5bdd974a739850a4158f689621cff1603e8a5e8",
    ),
]


@pytest.mark.parametrize(("doc", "digest"), _DIGESTS_BEFORE_TD_ATTRIBUTE_FIELDS)
def test_fields_added_later_leave_older_policies_digest_alone(
    doc: dict[str, object], digest: str
) -> None:
    assert load_policy(json.dumps(doc)).digest == digest


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("require_sept_ve_disable", True),
        ("unsafe_allow_migratable", True),
        ("allow_pks", False),
        ("allow_kl", True),
        ("allow_perfmon", False),
        ("unsafe_allow_td_attribute_bits", [27]),
        ("allowed_xfam", ["e702060000000000"]),
    ],
)
def test_a_later_field_away_from_its_default_changes_the_digest(field: str, value: object) -> None:
    doc, digest = _DIGESTS_BEFORE_TD_ATTRIBUTE_FIELDS[0]
    tdx = dict(doc["tdx"])  # type: ignore[call-overload]
    changed = load_policy(json.dumps({**doc, "tdx": {**tdx, field: value}}))
    assert changed.digest != digest
    # ... and stating the default explicitly is the same policy as leaving it out.
    default = TdxPolicy.model_fields[field].get_default(call_default_factory=True)
    same = load_policy(
        json.dumps(
            {**doc, "tdx": {**tdx, field: list(default) if type(default) is tuple else default}}
        )
    )
    assert same.digest == digest


def test_digest_omitted_fields_name_real_fields() -> None:
    from pydantic import BaseModel

    import attest.policy as module

    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, BaseModel):
            omitted = getattr(obj, "DIGEST_OMITTED_AT_DEFAULT", frozenset())
            assert omitted <= set(obj.model_fields), obj.__name__


# Digests of policies computed before the SEV-SNP CXL/single-socket/PLATFORM_INFO fields and
# the TDX MRCONFIGID/MROWNER/MROWNERCONFIG/MRSERVICETD allow-lists existed (commit 6b55e8a).
_DIGESTS_BEFORE_CPU_CONFIGURATION_FIELDS = [
    (
        {"name": "s", "cpu_tees": ["snp"], "snp": {"allowed_measurements": ["11" * 48]}},
        "sha256:f471bce648da14168d1e3ab24fe0ff2e3dff4bf56d0cc0d5a2fa30d2ec0a10ba",
    ),
    (
        {
            "name": "both",
            "cpu_tees": ["snp", "tdx"],
            "snp": {
                "unsafe_any_measurement": True,
                "allow_smt": False,
                "minimum_tcb": {"snp": 24, "microcode": 219},
            },
            "tdx": {
                "allowed_mrtd": ["00" * 48],
                "rtmrs": [{"index": 1, "allowed": ["ab" * 48]}],
            },
        },
        "sha256:3deacc7e5de5dd4f6bfb564f39acec0ed3e057d467d1f13a022545f5be7a01b3",
    ),
    *_DIGESTS_BEFORE_TD_ATTRIBUTE_FIELDS,
]


@pytest.mark.parametrize(("doc", "digest"), _DIGESTS_BEFORE_CPU_CONFIGURATION_FIELDS)
def test_cpu_configuration_fields_leave_older_policies_digest_alone(
    doc: dict[str, object], digest: str
) -> None:
    assert load_policy(json.dumps(doc)).digest == digest


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("snp", "unsafe_allow_cxl", True),
        ("snp", "require_single_socket", True),
        ("snp", "require_alias_check_complete", True),
        ("snp", "allowed_platform_info_unknown_bits", 1 << 6),
        ("tdx", "allowed_mr_config_id", ["00" * 48]),
        ("tdx", "allowed_mr_owner", ["00" * 48]),
        ("tdx", "allowed_mr_owner_config", ["00" * 48]),
        ("tdx", "allowed_mr_servicetd", ["00" * 48]),
    ],
)
def test_a_cpu_configuration_field_away_from_its_default_changes_the_digest(
    section: str, field: str, value: object
) -> None:
    doc, digest = _DIGESTS_BEFORE_CPU_CONFIGURATION_FIELDS[1]
    sub = dict(doc[section])  # type: ignore[call-overload]
    changed = load_policy(json.dumps({**doc, section: {**sub, field: value}}))
    assert changed.digest != digest
    model = {"snp": SnpPolicy, "tdx": TdxPolicy}[section]
    assert field in model.DIGEST_OMITTED_AT_DEFAULT
    default = model.model_fields[field].get_default(call_default_factory=True)
    same = load_policy(json.dumps({**doc, section: {**sub, field: default}}))
    assert same.digest == digest
