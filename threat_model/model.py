"""Threats as data (threat_model/threats.toml), validated strictly.

Each threat names the adversary, the asset, the attack, the mitigation (modules in this repo),
the tests that prove the mitigation (pytest node ids ``path::test_name``), and the residual risk.
A threat without tests must say why in ``accepted_risk`` (out of scope, or accepted with a
reason). ``threat_model.check`` verifies that every referenced module and test exists.
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from importlib import resources
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from attest.errors import InputError

ThreatId = Annotated[str, StringConstraints(pattern=r"^T-[A-Z]+-[0-9]{2}$")]
TestId = Annotated[str, StringConstraints(pattern=r"^tests/[\w/]+\.py::[\w\[\]-]+$")]


class Adversary(StrEnum):
    HOST_ROOT = "host owner with root on the host"
    HOST_PHYSICAL = "host owner with physical access"
    RELAY = "network relay"
    CLIENT = "malicious client"
    BROKER_REPLICA = "compromised broker replica"
    AUDITOR = "insider auditor"
    VENDOR = "hardware vendor"


class Threat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: ThreatId
    title: str = Field(min_length=3, max_length=120)
    adversary: Adversary
    asset: str = Field(min_length=3)
    attack: str = Field(min_length=10)
    mitigation: str = Field(min_length=10)
    modules: tuple[str, ...] = ()
    tests: tuple[TestId, ...] = ()
    residual: str = Field(min_length=3)
    #: Why there is no test: "out of scope: ..." or "accepted: ...".
    accepted_risk: str | None = None

    @model_validator(mode="after")
    def _tested_or_accepted(self) -> Threat:
        if not self.tests and not self.accepted_risk:
            raise ValueError(f"{self.id}: needs at least one test or an accepted_risk reason")
        if self.tests and not self.modules:
            raise ValueError(f"{self.id}: a tested mitigation must name its modules")
        return self


class ThreatModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    threats: tuple[Threat, ...]

    @model_validator(mode="after")
    def _unique_ids(self) -> ThreatModel:
        ids = [t.id for t in self.threats]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate threat ids: {', '.join(dupes)}")
        return self


def load_threat_model(text: str | None = None) -> ThreatModel:
    """Load the shipped model (or ``text``); InputError lists every problem."""
    if text is None:
        text = resources.files(__package__).joinpath("threats.toml").read_text(encoding="utf-8")
    try:
        return ThreatModel.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"threats.toml is not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InputError(f"invalid threat model: {problems}") from None
