"""``DeviceAppraisal.submodule`` is signed into every result: its output is exactly what the
straightforward implementation gave before issue #5, with and without findings."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from attest.appraise.common import DeviceAppraisal
from attest.appraise.composite import GPU_CATEGORIES
from attest.ear import AFFIRMING_VALUE, CONTRAINDICATED_VALUE, WARNING_VALUE, Status
from attest.findings import Finding, Severity


def _reference(d: DeviceAppraisal, policy_id: str) -> dict[str, Any]:
    if any(f.severity is Severity.REJECT for f in d.findings):
        status = Status.CONTRAINDICATED
    elif d.findings:
        status = Status.WARNING
    else:
        status = Status.AFFIRMING
    vector: dict[str, int] = {}
    for claim, prefixes in d.categories.items():
        hits = [f for f in d.findings if f.field.startswith(prefixes)]
        if any(f.severity is Severity.REJECT for f in hits):
            vector[claim] = CONTRAINDICATED_VALUE
        elif hits:
            vector[claim] = WARNING_VALUE
        else:
            vector[claim] = AFFIRMING_VALUE
    out: dict[str, Any] = {"ear.status": status.value}
    if vector:
        out["ear.trustworthiness-vector"] = vector
    out["ear.appraisal-policy-id"] = policy_id
    out.update(d.claims)
    if d.findings:
        out["ear.lessee.findings"] = [f.to_json() for f in d.findings]
    return out


_FIELDS = st.sampled_from(["gpu.nonce", "measres", "gpu.cc_mode", "topology", "x-nvidia-gpu-arch"])
_findings = st.lists(
    st.builds(
        Finding,
        st.just("gpu0"),
        _FIELDS,
        st.one_of(st.none(), st.text(max_size=5), st.binary(max_size=4)),
        st.one_of(st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2)),
        st.sampled_from(list(Severity)),
        st.text(max_size=8),
    ),
    max_size=4,
).map(tuple)
_claims = st.dictionaries(st.text(max_size=6), st.one_of(st.booleans(), st.text(max_size=4)))


@settings(max_examples=300, deadline=None)
@given(_findings, _claims, st.sampled_from([GPU_CATEGORIES, {}, {"hardware": ("cpu.",)}]))
def test_submodule_is_byte_for_byte_the_reference(
    findings: tuple[Finding, ...], claims: dict[str, Any], categories: Any
) -> None:
    d = DeviceAppraisal("gpu0", findings, categories, claims)
    sub = d.submodule("sha256:ab")
    assert sub.to_json() == _reference(d, "sha256:ab")
    assert list(sub.to_json()) == list(_reference(d, "sha256:ab"))  # key order too


def test_affirming_vector_lists_every_category_in_order() -> None:
    d = DeviceAppraisal("gpu0", (), GPU_CATEGORIES, {"x": 1})
    assert list(d.trust_vector().items()) == [(c, AFFIRMING_VALUE) for c in GPU_CATEGORIES]
    assert d.submodule("p").status is Status.AFFIRMING
