"""Field-level fuzzing of a ``release_refused`` entry (``attest.log.entry``).

Byte flips (``test_entry.py``) rarely produce well-formed JSON with a *different value* in a
field; these edits do: one field of a valid refusal is replaced by an arbitrary JSON value (or
a near miss of a valid one), deleted, renamed, or a field is added, and the object is written
back as canonical JSON or as a near-canonical spelling. Every result must either decode to a
*different* canonical entry or raise the typed ``EntryError``: never an untyped exception,
never the same entry under a second spelling, never a release read from a refusal.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from attest.log.entry import EntryError, EntryKind, RefusalReason, decode_entry
from tests.log.helpers import make_refusal_entry

REFUSED, _ = make_refusal_entry(1, RefusalReason.POLICY_CHANGED)
ORIGINAL: dict[str, Any] = json.loads(REFUSED.raw)
FIELDS = sorted(ORIGINAL)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
#: Values a hand-written edit would try: other kinds and reasons, their case and spacing
#: variants, hex of other lengths and case, times, versions, blob references with a key off.
_near = st.one_of(
    st.sampled_from([k.value for k in EntryKind] + [r.value for r in RefusalReason]),
    st.sampled_from([r.value.upper() for r in RefusalReason] + [" expired", "expired\n"]),
    st.binary(min_size=0, max_size=70).map(bytes.hex),
    st.binary(min_size=16, max_size=64).map(lambda b: b.hex().upper()),
    st.sampled_from(
        [
            "2026-11-28T12:00:00.123456Z",
            "2026-11-28T12:00:00.123456+00:00",
            "2026-11-28T12:00:00Z",
            "2026-02-30T12:00:00.000000Z",
            "0000-01-01T00:00:00.000000Z",
            "0999-01-01T00:00:00.000000Z",
        ]
    ),
    st.sampled_from([0, 1, 2, True, "1", 1.0]),
    st.builds(
        lambda drop, extra, size: {
            **{k: v for k, v in ORIGINAL["policy"].items() if k != drop},
            **({extra: 0} if extra else {}),
            **({"size": size} if size is not None else {}),
        },
        st.sampled_from(["", "role", "media_type", "sha256", "size"]),
        st.sampled_from(["", "extra", "Role"]),
        st.none() | st.integers(-1, 2**54) | st.just(True),
    ),
)
_value = _near | _json


@st.composite
def edited(draw: st.DrawFn) -> dict[str, Any]:
    obj = dict(ORIGINAL)
    action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "rename", "add"]))
    name = draw(st.sampled_from(FIELDS))
    if action == "replace":
        obj[name] = draw(_value)
    elif action == "delete":
        del obj[name]
    elif action == "rename":
        obj[draw(st.text(min_size=1, max_size=24))] = obj.pop(name)
    else:
        obj[draw(st.text(min_size=1, max_size=24) | st.sampled_from(FIELDS))] = draw(_value)
    return obj


def _spell(obj: dict[str, Any], how: str) -> bytes:
    if how == "canonical":
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    if how == "unsorted":
        return json.dumps(obj, separators=(",", ":")).encode()
    if how == "spaced":
        return json.dumps(obj, sort_keys=True).encode()
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=600, deadline=None)
@given(obj=edited(), how=st.sampled_from(["canonical", "canonical", "unsorted", "spaced", "utf8"]))
def test_single_field_edits_of_a_refusal(obj: dict[str, Any], how: str) -> None:
    data = _spell(obj, how)
    try:
        entry = decode_entry(data)
    except EntryError:
        return
    # Whatever decodes is canonical, and the same bytes decode to the same entry again.
    assert entry.raw == data and decode_entry(data) == entry
    if data == REFUSED.raw:
        assert entry == REFUSED
        return
    assert entry != REFUSED, f"a second spelling of the refusal decodes: {data!r}"
    assert entry.kind is not EntryKind.RELEASE_REFUSED or entry.reason is not None
    assert entry.kind is not EntryKind.RELEASE or "reason" not in json.loads(data)
