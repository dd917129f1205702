"""The replay's cheap road to a reproduced verdict (``same_verdict``): the logged and the
recomputed verdict are the same JSON values, node for node and type for type, so neither is
encoded. It must take every honest entry, must never call two verdicts equal that the full
comparison (``compare_verdicts``) calls different, and anything it does not take must still
be judged by the full comparison, with the same outcome as before it existed."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from enum import StrEnum
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.audit import replay
from agent.audit.replay import _canonical, replay_bundle_file, same_json
from attest.ear import Submodule
from tests.audit.helpers import VERIFIER_KEY, Built, build, evidence, forge_attest
from tests.log.helpers import LOG_SIGNER


@pytest.fixture
def hits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    seen: list[bool] = []
    real = replay.same_verdict

    def counting(*args: object) -> bool:
        seen.append(real(*args))  # type: ignore[arg-type]
        return seen[-1]

    monkeypatch.setattr(replay, "same_verdict", counting)
    yield seen


def _replay(b: Built) -> replay.ReplayReport:
    path = b.export()
    b.close()
    return replay_bundle_file(
        path, LOG_SIGNER.verifier(), VERIFIER_KEY.public_key(), appraise=b.appraise
    )


def test_every_honest_verdict_takes_the_cheap_road(tmp_path: Path, hits: list[bool]) -> None:
    b = build(tmp_path, stand_in=True)
    b.attest(evidence())
    b.attest(evidence(cc_mode_on=False))  # a verdict with findings
    report = _replay(b)
    assert report.ok and hits == [True, True]
    assert [e.verdict_equal for e in report.entries] == [True, True]


def test_real_appraisal_verdicts_take_the_cheap_road(tmp_path: Path, hits: list[bool]) -> None:
    """The real composite appraisal: NVIDIA claims, nested objects, findings with details."""
    b = build(tmp_path, stand_in=False)
    b.attest(evidence())
    report = _replay(b)
    assert report.ok and hits == [True]


def _reword(submods: dict[str, Submodule]) -> dict[str, Submodule]:
    out = {}
    for name, s in submods.items():
        extra = dict(s.extra)
        if "ear.lessee.findings" in extra:
            extra["ear.lessee.findings"] = [
                dict(f, detail="worded otherwise") for f in extra["ear.lessee.findings"]
            ]
        out[name] = replace(s, extra=extra)
    return out


def test_reworded_details_take_the_full_comparison_and_stay_equal(
    tmp_path: Path, hits: list[bool]
) -> None:
    b = build(tmp_path, stand_in=True)
    forge_attest(b, bundle=evidence(cc_mode_on=False), edit=_reword)
    report = _replay(b)
    assert hits == [False]
    assert report.ok and report.entries[0].verdict_equal


def _bool_as_int(submods: dict[str, Submodule]) -> dict[str, Submodule]:
    gpu = submods["gpu0"]
    claim = next(k for k, v in gpu.extra.items() if v is True)
    return {**submods, "gpu0": replace(gpu, extra={**gpu.extra, claim: 1})}


def test_a_value_equal_in_python_but_not_in_json_is_still_a_mismatch(
    tmp_path: Path, hits: list[bool]
) -> None:
    """``1 == True`` in Python; in JSON they are different values, and a logged ``1`` where
    the appraisal says ``true`` is a verdict that was not reproduced."""
    b = build(tmp_path, stand_in=False)
    forge_attest(b, bundle=evidence(), edit=_bool_as_int)
    report = _replay(b)
    assert hits == [False]
    assert [f.code for f in report.findings] == ["verdict_mismatch"]
    assert "gpu0 claims differ" in report.findings[0].message


def test_reports_are_the_same_without_the_cheap_road(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Differential: honest and forged entries replay to the same report whether or not the
    cheap road is taken (with it switched off, ``compare_verdicts`` decides every entry)."""
    b = build(tmp_path, stand_in=False)
    b.attest(evidence())
    b.attest(evidence(cc_mode_on=False))
    forge_attest(b, bundle=evidence(), edit=_bool_as_int)
    forge_attest(b, bundle=evidence(cc_mode_on=False), edit=_reword)
    path = b.export()
    b.close()

    def run() -> dict[str, object]:
        report = replay_bundle_file(path, LOG_SIGNER.verifier(), VERIFIER_KEY.public_key())
        return report.to_json()

    fast = run()
    monkeypatch.setattr(replay, "same_verdict", lambda logged, ours: False)
    slow = run()
    assert fast == slow
    assert [e["verdict_equal"] for e in fast["entries"]] == [True, True, False, True]  # type: ignore[index]


# ---- same_json against the canonical text ---------------------------------------------------


class _Word(StrEnum):
    A = "a"


_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, math.nan, math.inf]),
    st.sampled_from(["a", "b", "", "é", _Word.A]),
)
_values = st.recursive(
    _atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
        st.dictionaries(st.sampled_from([1, True, "1", "true"]), inner, max_size=2),
    ),
    max_leaves=12,
)


def _text(value: object) -> str | None:
    try:
        return _canonical(value)
    except (TypeError, ValueError):
        return None


@settings(max_examples=600, deadline=None)
@given(a=_values, b=_values)
def test_same_json_implies_the_same_canonical_text(a: object, b: object) -> None:
    """Soundness: whatever two values ``same_json`` calls the same encode to one text."""
    if same_json(a, b):
        assert _text(a) is not None and _text(a) == _text(b)


_plain = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 3),
        st.sampled_from([0.0, -0.0, 1.0, 2.5]),
        st.sampled_from(["a", "b", "", "é"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(a=_plain)
def test_same_json_takes_a_value_and_its_json_round_trip(a: object) -> None:
    """Completeness where it matters: a value of plain JSON types (lists, str keys: what both
    sides of a verdict hold) is the same as the parse of its own canonical text."""
    text = _text(a)
    assert text is not None
    assert same_json(a, json.loads(text))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (True, 1),
        (1, True),
        (1, 1.0),
        (0.0, -0.0),
        (False, 0),
        ({"x": True}, {"x": 1}),
        ({"x": [1, 2]}, {"x": [1, 2.0]}),
        ({True: 1}, {1: 1}),
        ([{"a": None}], [{"a": 0}]),
        ((1, 2), [1, 2]),  # equal JSON, but not taken: the full comparison decides
        (_Word.A, "a"),
    ],
)
def test_values_python_calls_equal_are_not_taken(a: object, b: object) -> None:
    assert not same_json(a, b)


def test_plain_equal_values_are_taken() -> None:
    value = {"a": [1, True, None, "x", 2.5, {"b": -0.0}], "c": {}}
    assert same_json(value, json.loads(json.dumps(value)))
