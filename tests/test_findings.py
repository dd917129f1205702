"""``Finding.to_json`` is signed into every result: its fast path gives exactly what the
straightforward implementation gave, for every kind of value a check may record."""

from __future__ import annotations

from enum import Enum, IntEnum, StrEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.findings import Finding, Severity


def _reference_jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple | set | frozenset):
        return [_reference_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _reference_jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _reference(f: Finding) -> dict[str, Any]:
    return {
        "device": f.device,
        "field": f.field,
        "expected": _reference_jsonable(f.expected),
        "actual": _reference_jsonable(f.actual),
        "severity": f.severity.value,
        "detail": f.detail,
    }


class _Colour(Enum):
    RED = 1


class _Level(IntEnum):
    HIGH = 3


class _Mode(StrEnum):
    ON = "on"


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.sampled_from([_Colour.RED, _Level.HIGH, _Mode.ON, Severity.WARN]),
)
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(_values, _values, st.sampled_from(list(Severity)), st.text(max_size=8))
def test_to_json_is_the_reference(expected: Any, actual: Any, sev: Severity, detail: str) -> None:
    f = Finding("gpu0", "gpu.nonce", expected, actual, sev, detail)
    out = f.to_json()
    assert out == _reference(f)
    assert [type(v) for v in out.values()] == [type(v) for v in _reference(f).values()]
    assert type(out["severity"]) is str


def test_a_severity_that_is_no_severity_fails_as_before() -> None:
    f = Finding("gpu0", "gpu.nonce", 1, 2, "warn")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        f.to_json()
