"""Appraisal findings: every failed check, with the field and both values.

Security failures in parsing and signatures raise (see ``attest.errors``); policy failures are
collected, because operators and auditors need the whole list, not the first problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    """``reject`` makes the device contraindicated; ``warn`` makes it at best a warning."""

    REJECT = "reject"
    WARN = "warn"


@dataclass(frozen=True)
class Finding:
    """One failed check of one device: ``device`` is a submodule name such as ``gpu0``."""

    device: str
    field: str
    expected: Any
    actual: Any
    severity: Severity = Severity.REJECT
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "field": self.field,
            "expected": _jsonable(self.expected),
            "actual": _jsonable(self.actual),
            "severity": self.severity.value,
            "detail": self.detail,
        }

    def __str__(self) -> str:
        text = f"{self.device}: {self.field}: expected {self.expected!r}, got {self.actual!r}"
        return f"{text} ({self.detail})" if self.detail else text


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
