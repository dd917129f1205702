"""The adversarial target table names real threats: every ``Target.threat`` is an id of
``threat_model/threats.toml`` (no placeholders left), and every threat a target names lists
the mutation suite among its tests, so the model's proof and the suite's coverage agree."""

from __future__ import annotations

from tests.adversarial.targets import TARGETS
from threat_model.model import load_threat_model

MUTATION_TEST = "tests/adversarial/test_mutation_suite.py::test_mutants_rejected_typed_and_bounded"


def test_every_target_names_a_modelled_threat() -> None:
    ids = {t.id for t in load_threat_model().threats}
    unknown = sorted({t.threat for t in TARGETS} - ids)
    assert not unknown, f"targets name threats the model lacks: {unknown}"
    assert not [t.name for t in TARGETS if "xx" in t.threat]


def test_threats_with_targets_cite_the_mutation_suite() -> None:
    model = {t.id: t for t in load_threat_model().threats}
    missing = sorted(
        tid for tid in {t.threat for t in TARGETS} if MUTATION_TEST not in model[tid].tests
    )
    assert not missing, f"threats tested by mutation targets but not citing the suite: {missing}"
