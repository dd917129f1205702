"""The threat model holds: every threat has a mitigation and existing tests (or a stated reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import main
from attest.errors import InputError
from threat_model.check import check_model
from threat_model.model import load_threat_model
from threat_model.render import to_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_every_referenced_module_and_test_exists() -> None:
    model = load_threat_model()
    assert check_model(model, ROOT) == []
    ids = {t.id for t in model.threats}
    for required in (
        "T-WEIGHTS-01",
        "T-STREAM-02",
        "T-EVIDENCE-02",
        "T-LOG-01",
        "T-SIDE-01",
        "T-DOS-01",
        "T-SCOPE-01",
    ):
        assert required in ids


def test_checker_catches_missing_tests_and_modules() -> None:
    text = (ROOT / "threat_model/threats.toml").read_text()
    broken = load_threat_model(
        text.replace("test_reordered_chunks", "test_does_not_exist", 1).replace(
            '"sealing.weights._chunks"', '"sealing.nope"', 1
        )
    )
    problems = check_model(broken, ROOT)
    assert any("test_does_not_exist" in p for p in problems)
    assert any("sealing.nope" in p for p in problems)


def test_untested_threat_needs_accepted_risk() -> None:
    text = (ROOT / "threat_model/threats.toml").read_text()
    with pytest.raises(InputError, match="accepted_risk"):
        load_threat_model(
            text.replace(
                'accepted_risk = "accepted: evidence is not secret; bundles carry no key material"',
                "",
            )
        )


def test_docs_copy_is_current() -> None:
    assert (ROOT / "docs/threat-model.md").read_text() == to_markdown(load_threat_model())


def test_cli_check_and_render(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["threats", "--check", "--root", str(ROOT)]) == 0
    assert main(["threats"]) == 0
    assert "T-STREAM-02" in capsys.readouterr().out
