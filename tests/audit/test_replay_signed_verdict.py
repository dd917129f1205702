"""The replay's cheap road to a reproduced verdict (``signs_verdict``): the logged token's
payload is byte for byte what the broker would sign with the recomputed verdict. It must take
every honest entry, and anything it does not take must still be judged by the full
comparison, with the same outcome as before it existed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.audit import replay
from agent.audit.replay import replay_bundle_file
from attest.ear import Submodule
from tests.audit.helpers import VERIFIER_KEY, Built, build, evidence, forge_attest
from tests.log.helpers import LOG_SIGNER


@pytest.fixture
def hits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    seen: list[bool] = []
    real = replay.signs_verdict

    def counting(*args: object) -> bool:
        seen.append(real(*args))  # type: ignore[arg-type]
        return seen[-1]

    monkeypatch.setattr(replay, "signs_verdict", counting)
    yield seen


def _replay(b: Built) -> replay.ReplayReport:
    path = b.export()
    b.close()
    return replay_bundle_file(
        path, LOG_SIGNER.verifier(), VERIFIER_KEY.public_key(), appraise=b.appraise
    )


def test_every_honest_verdict_is_seen_in_the_signed_payload(
    tmp_path: Path, hits: list[bool]
) -> None:
    b = build(tmp_path, stand_in=True)
    b.attest(evidence())
    b.attest(evidence(cc_mode_on=False))  # a verdict with findings
    report = _replay(b)
    assert report.ok and hits == [True, True]
    assert [e.verdict_equal for e in report.entries] == [True, True]


def test_real_appraisal_verdicts_are_seen_in_the_signed_payload(
    tmp_path: Path, hits: list[bool]
) -> None:
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
