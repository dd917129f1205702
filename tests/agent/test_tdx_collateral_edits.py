"""Field-level fuzzing of ``check_tdx_collateral`` (``lessee agent --tdx-collateral FILE``).

The agent checks the operator's collateral file at start, so a wrong file is exit 2 (an
``InputError``), never a traceback. Byte edits reach ``parse_collateral_json`` through the
mutation suite; these edits keep the JSON well-formed and change one of the nine
QuoteCollateralV3 fields instead: another JSON type, a near miss of the hex or PEM it holds,
a cut, or the key deleted, renamed or doubled. Each must be refused with ``InputError`` or
pass unchanged (``check_tdx_collateral`` returns the bytes as given).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.evidence.sources import check_tdx_collateral
from attest.errors import InputError
from tests.tdx.helpers import DCAP

COLLATERAL = (DCAP / "tdx_quote_collateral.json").read_bytes()
ORIGINAL: dict[str, Any] = json.loads(COLLATERAL)
FIELDS = sorted(ORIGINAL)

_other = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.text(max_size=30),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def edited(draw: st.DrawFn) -> bytes:
    obj = dict(ORIGINAL)
    name = draw(st.sampled_from(FIELDS))
    value: str = obj[name]
    action = draw(st.sampled_from(["type", "cut", "char", "upper", "swap", "delete", "rename"]))
    if action == "type":
        obj[name] = draw(_other)
    elif action == "cut":
        obj[name] = value[: draw(st.integers(0, max(0, len(value) - 1)))]
    elif action == "char" and value:
        i = draw(st.integers(0, len(value) - 1))
        obj[name] = value[:i] + draw(st.characters(codec="utf-8")) + value[i + 1 :]
    elif action == "upper":
        obj[name] = value.upper()
    elif action == "swap":
        obj[name] = obj[draw(st.sampled_from(FIELDS))]
    elif action == "delete":
        del obj[name]
    else:
        obj[draw(st.text(min_size=1, max_size=20))] = obj.pop(name)
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 3)) == 0:  # a repeated key: JSON allows it, a strict reader must not
        text = text[:-1] + f", {json.dumps(name)}: {json.dumps(value)}}}"
    return text.encode("utf-8", "surrogatepass")


def test_the_real_collateral_passes_unchanged() -> None:
    assert check_tdx_collateral(COLLATERAL) == COLLATERAL


@settings(max_examples=400, deadline=None)
@given(data=edited())
def test_field_edits_are_refused_typed_or_pass_unchanged(data: bytes) -> None:
    try:
        out = check_tdx_collateral(data)
    except InputError:
        return
    assert out == data
