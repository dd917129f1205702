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


#: Types ``_jsonable`` hands back unchanged (exact types; subclasses take the long way).
_PLAIN_JSON_TYPES = frozenset({str, int, float, bool, type(None)})
#: ``Severity.value`` without the enum descriptor on every finding.
_SEVERITY_TEXT = {s: s.value for s in Severity}


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
        """The JSON form signed into results (and rebuilt by the auditor's replay for every
        finding of every entry, ~100 per 8-GPU entry): plain values pass through as they are
        and the severity's text is looked up, both without a call per field."""
        expected, actual, severity = self.expected, self.actual, self.severity
        return {
            "device": self.device,
            "field": self.field,
            "expected": expected if type(expected) in _PLAIN_JSON_TYPES else _jsonable(expected),
            "actual": actual if type(actual) in _PLAIN_JSON_TYPES else _jsonable(actual),
            "severity": _SEVERITY_TEXT[severity] if type(severity) is Severity else severity.value,
            "detail": self.detail,
        }

    def __str__(self) -> str:
        text = f"{self.device}: {self.field}: expected {self.expected!r}, got {self.actual!r}"
        return f"{text} ({self.detail})" if self.detail else text


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it. The first test answers for nearly every finding value
    at one set lookup: an 8-GPU verdict has ~100 findings, each serialised by the broker and
    again by the auditor's replay."""
    if type(value) in _PLAIN_JSON_TYPES:
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
