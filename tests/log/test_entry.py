"""The canonical, versioned log entry encoding."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attest.log.entry as entry_module
from attest.ear import is_compact_jws
from attest.errors import InputError, LesseeError
from attest.log.entry import (
    MAX_ENTRY_BYTES,
    MAX_MODEL_VERSION,
    BlobRef,
    EntryError,
    EntryKind,
    LogEntry,
    RefusalReason,
    _canonical,
    _parse_time,
    decode_entry,
)
from tests.log.helpers import (
    EAR,
    MANIFEST,
    MODEL_VERSION,
    POLICY,
    T0,
    make_entry,
    make_refusal_entry,
)

ATTEST, _ = make_entry(0)
RELEASE, _ = make_entry(1)
REFUSED, _ = make_refusal_entry(1, RefusalReason.POLICY_CHANGED)
RELEASE2, _ = make_entry(1, v2=True)
REFUSED2, _ = make_refusal_entry(1, RefusalReason.MANIFEST_PIN, v2=True)


def test_roundtrip_and_exact_bytes() -> None:
    for entry in (ATTEST, RELEASE):
        again = decode_entry(entry.raw)
        assert again == entry and again.raw == entry.raw
    obj = json.loads(ATTEST.raw)
    assert list(obj) == sorted(obj)  # keys sorted
    assert obj["v"] == 1 and obj["kind"] == "attest"
    assert obj["time"] == "2026-11-28T12:00:00.123456Z"
    assert b'": ' not in ATTEST.raw and b', "' not in ATTEST.raw  # no insignificant whitespace
    assert ATTEST.raw == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    assert RELEASE.kind is EntryKind.RELEASE and RELEASE.model_id == "example/model-7b"
    assert [r.role for r in ATTEST.blob_refs()] == ["policy", "cpu0.report"]
    assert ATTEST.policy == BlobRef.of("policy", "application/json", POLICY)


def test_refusal_roundtrip_and_exact_bytes() -> None:
    """A refused release is a release entry's fields plus ``reason``, in sorted key order;
    the written-out bytes are pinned, so any change to the encoding is a deliberate one."""
    again = decode_entry(REFUSED.raw)
    assert again == REFUSED and again.raw == REFUSED.raw
    assert again.kind is EntryKind.RELEASE_REFUSED and again.reason is RefusalReason.POLICY_CHANGED
    obj = json.loads(REFUSED.raw)
    assert list(obj) == sorted(obj)
    assert REFUSED.raw == _canonical(REFUSED._to_json())
    release = json.loads(RELEASE.raw)
    assert obj == release | {"kind": "release_refused", "reason": "policy_changed"}
    assert REFUSED.raw == (
        b'{"binding":"' + RELEASE.binding.hex().encode() + b'","kind":"release_refused",'
        b'"model_id":"example/model-7b","nonce":"' + RELEASE.nonce.hex().encode() + b'",'
        b'"policy":{"media_type":"application/json","role":"policy","sha256":"'
        + RELEASE.policy.sha256.hex().encode()
        + b'","size":32},"reason":"policy_changed","recipient_key_sha256":"'
        + (RELEASE.recipient_key_sha256 or b"").hex().encode()
        + b'","result":"'
        + EAR.encode()
        + b'","time":"2026-11-28T12:00:01.123456Z",'
        b'"v":1,"verifier":"lessee 0.1.0"}'
    )
    assert [r.value for r in RefusalReason] == [
        "unknown_result",
        "model_mismatch",
        "not_affirming",
        "policy_changed",
        "manifest_pin",
        "expired",
        "key_mismatch",
        "result_used",
    ]


def test_version_2_release_and_refusal_exact_bytes() -> None:
    """Version 2 is a version-1 release or refusal plus ``model_version`` and
    ``manifest_sha256``, in sorted key order, with ``"v":2``; pinned bytes, so any change to
    the encoding is a deliberate one."""
    for v2, v1 in ((RELEASE2, RELEASE), (REFUSED2, REFUSED)):
        again = decode_entry(v2.raw)
        assert again == v2 and again.raw == v2.raw and again.version == 2
        assert (again.model_version, again.manifest_sha256) == (MODEL_VERSION, MANIFEST)
        assert v2.raw == _canonical(v2._to_json())
        obj = json.loads(v2.raw)
        assert list(obj) == sorted(obj)
        old = json.loads(v1.raw)
        assert obj == old | {
            "v": 2,
            "model_version": MODEL_VERSION,
            "manifest_sha256": MANIFEST.hex(),
            **({"reason": "manifest_pin"} if v2.kind is EntryKind.RELEASE_REFUSED else {}),
        }
    assert RELEASE2.raw == (
        b'{"binding":"' + RELEASE.binding.hex().encode() + b'","kind":"release",'
        b'"manifest_sha256":"' + MANIFEST.hex().encode() + b'",'
        b'"model_id":"example/model-7b","model_version":7,'
        b'"nonce":"' + RELEASE.nonce.hex().encode() + b'",'
        b'"policy":{"media_type":"application/json","role":"policy","sha256":"'
        + RELEASE.policy.sha256.hex().encode()
        + b'","size":32},"recipient_key_sha256":"'
        + (RELEASE.recipient_key_sha256 or b"").hex().encode()
        + b'","result":"'
        + EAR.encode()
        + b'","time":"2026-11-28T12:00:01.123456Z",'
        b'"v":2,"verifier":"lessee 0.1.0"}'
    )


def test_version_1_entries_keep_their_bytes_and_meaning() -> None:
    """Old logs still verify: version-1 releases and refusals decode to entries without the
    new fields and re-encode to the very same bytes; attest entries are version 1 always."""
    for e in (ATTEST, RELEASE, REFUSED):
        again = decode_entry(e.raw)
        assert again.raw == e.raw and again.version == 1
        assert again.model_version is None and again.manifest_sha256 is None
        assert b'"v":1,' in e.raw and b"manifest_sha256" not in e.raw
    assert decode_entry(RELEASE2.raw) != RELEASE  # the version is part of the meaning


def test_version_2_fields_checked_when_built() -> None:
    fields = {
        f: getattr(RELEASE, f)
        for f in ("time", "nonce", "binding", "policy", "verifier", "result", "model_id")
    }
    key = RELEASE.recipient_key_sha256
    with pytest.raises(EntryError, match="both model_version and manifest_sha256"):
        LogEntry(kind=EntryKind.RELEASE, recipient_key_sha256=key, model_version=1, **fields)
    with pytest.raises(EntryError, match="both model_version and manifest_sha256"):
        LogEntry(
            kind=EntryKind.RELEASE, recipient_key_sha256=key, manifest_sha256=MANIFEST, **fields
        )
    for bad in (-1, MAX_MODEL_VERSION + 1, True):
        with pytest.raises(EntryError, match="model_version must be an integer"):
            LogEntry(
                kind=EntryKind.RELEASE,
                recipient_key_sha256=key,
                model_version=bad,
                manifest_sha256=MANIFEST,
                **fields,
            )
    with pytest.raises(EntryError, match="manifest digest must be 32 bytes"):
        LogEntry(
            kind=EntryKind.RELEASE,
            recipient_key_sha256=key,
            model_version=1,
            manifest_sha256=MANIFEST[:31],
            **fields,
        )
    with pytest.raises(EntryError, match="attest entry has no model_version"):
        LogEntry(
            kind=EntryKind.ATTEST,
            evidence=ATTEST.evidence,
            model_version=1,
            manifest_sha256=MANIFEST,
            **{k: v for k, v in fields.items() if k != "model_id"},
        )
    top = LogEntry(
        kind=EntryKind.RELEASE,
        recipient_key_sha256=key,
        model_version=MAX_MODEL_VERSION,
        manifest_sha256=MANIFEST,
        **fields,
    )
    assert decode_entry(top.raw) == top


def test_model_version_bound_is_the_brokers_and_the_sealed_formats() -> None:
    from sealing.weights._format import MAX_MODEL_VERSION as SEALED_MAX

    assert MAX_MODEL_VERSION == SEALED_MAX == 2**32 - 1


def test_reason_only_on_refusals() -> None:
    fields = {
        f: getattr(RELEASE, f)
        for f in ("time", "nonce", "binding", "policy", "verifier", "result", "model_id")
    }
    key = RELEASE.recipient_key_sha256
    with pytest.raises(EntryError, match="needs a refusal reason"):
        LogEntry(kind=EntryKind.RELEASE_REFUSED, recipient_key_sha256=key, **fields)
    with pytest.raises(EntryError, match="has no reason"):
        LogEntry(
            kind=EntryKind.RELEASE,
            recipient_key_sha256=key,
            reason=RefusalReason.EXPIRED,
            **fields,
        )
    with pytest.raises(EntryError, match="needs a refusal reason"):
        LogEntry(
            kind=EntryKind.RELEASE_REFUSED,
            recipient_key_sha256=key,
            # A plain string is not the enum: refused rather than taken on trust.
            reason="expired",  # type: ignore[arg-type]
            **fields,
        )


def test_time_normalised_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    e = make_entry(0)[0]
    shifted = type(e)(
        **{
            **{
                f: getattr(e, f)
                for f in (
                    "kind",
                    "nonce",
                    "binding",
                    "policy",
                    "verifier",
                    "result",
                    "evidence",
                    "collateral",
                )
            },
            "time": T0.astimezone(plus2),
        }
    )
    assert shifted.raw == e.raw
    with pytest.raises(InputError):
        type(e)(
            **{
                **{
                    f: getattr(e, f)
                    for f in (
                        "kind",
                        "nonce",
                        "binding",
                        "policy",
                        "verifier",
                        "result",
                        "evidence",
                    )
                },
                "time": datetime(2026, 1, 1),
            }
        )  # naive


def _mutate(raw: bytes, **changes: object) -> bytes:
    obj = json.loads(raw)
    for k, v in changes.items():
        if v is None:
            del obj[k]
        else:
            obj[k] = v
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "data",
    [
        _mutate(ATTEST.raw, v=2),
        _mutate(ATTEST.raw, v=True),
        _mutate(ATTEST.raw, kind="audit"),
        _mutate(ATTEST.raw, extra=1),
        _mutate(ATTEST.raw, collateral=None),
        _mutate(ATTEST.raw, evidence=[]),
        _mutate(ATTEST.raw, model_id="m"),
        _mutate(ATTEST.raw, time="2026-11-28T12:00:00Z"),
        _mutate(ATTEST.raw, time="2026-02-30T12:00:00.000000Z"),
        _mutate(ATTEST.raw, nonce="00" * 8),
        _mutate(ATTEST.raw, nonce="AB" * 16),
        _mutate(ATTEST.raw, binding="00" * 31),
        _mutate(ATTEST.raw, result="not a jwt"),
        _mutate(ATTEST.raw, verifier=""),
        _mutate(ATTEST.raw, verifier="caf\u00e9"),
        _mutate(ATTEST.raw, policy={"role": "policy"}),
        _mutate(RELEASE.raw, recipient_key_sha256="00" * 31),
        _mutate(RELEASE.raw, model_id=None),
        _mutate(RELEASE.raw, evidence=[]),
        _mutate(RELEASE.raw, reason="expired"),  # a release has no reason
        _mutate(ATTEST.raw, reason="expired"),
        _mutate(REFUSED.raw, reason=None),  # a refusal needs one
        _mutate(REFUSED.raw, reason="because"),  # not in the closed set
        _mutate(REFUSED.raw, reason="EXPIRED"),
        _mutate(REFUSED.raw, reason="expired "),
        _mutate(REFUSED.raw, reason=""),
        _mutate(REFUSED.raw, reason=1),
        _mutate(REFUSED.raw, reason=["expired"]),
        _mutate(REFUSED.raw, model_id=None),
        _mutate(REFUSED.raw, recipient_key_sha256=None),
        _mutate(REFUSED.raw, collateral=[]),
        _mutate(REFUSED.raw, kind="release-refused"),
        _mutate(REFUSED.raw, kind="refused"),
        # version 2: release and refusal entries only, with exactly both new fields
        _mutate(ATTEST.raw, v=2, model_version=1, manifest_sha256="00" * 32),
        _mutate(ATTEST.raw, model_version=1, manifest_sha256="00" * 32),
        _mutate(RELEASE.raw, model_version=1, manifest_sha256="00" * 32),  # v1 with them
        _mutate(REFUSED.raw, model_version=1, manifest_sha256="00" * 32),
        _mutate(RELEASE.raw, model_version=1),
        _mutate(RELEASE.raw, v=2),  # v2 without them
        _mutate(REFUSED.raw, v=2),
        _mutate(RELEASE2.raw, model_version=None),
        _mutate(RELEASE2.raw, manifest_sha256=None),
        _mutate(REFUSED2.raw, manifest_sha256=None),
        _mutate(RELEASE2.raw, v=1),
        _mutate(RELEASE2.raw, v=3),
        _mutate(RELEASE2.raw, model_version=-1),
        _mutate(RELEASE2.raw, model_version=MAX_MODEL_VERSION + 1),
        _mutate(RELEASE2.raw, model_version=True),
        _mutate(RELEASE2.raw, model_version="7"),
        _mutate(RELEASE2.raw, manifest_sha256="AB" * 32),
        _mutate(RELEASE2.raw, manifest_sha256="00" * 31),
        _mutate(RELEASE2.raw, manifest_sha256="00" * 33),
        _mutate(REFUSED2.raw, manifest_sha256=""),
        _mutate(REFUSED2.raw, reason=None),
        _mutate(REFUSED2.raw, evidence=[]),
        RELEASE2.raw.replace(b'"model_version":7', b'"model_version":7.0'),
        RELEASE2.raw.replace(b'"model_version":7', b'"model_version":07'),
        RELEASE2.raw.replace(b'"model_version":7', b'"model_version":7e0'),
        RELEASE2.raw.replace(b'"v":2', b'"v":2.0'),
        RELEASE2.raw.replace(b'"model_id"', b'"model_version":7,"model_id"'),  # duplicate
        REFUSED2.raw.replace(b'"manifest_sha256":"', b'"manifest_sha256": "'),
        REFUSED.raw.replace(b'"reason":"policy_changed"', b'"reason":"policy\\u005fchanged"'),
        REFUSED.raw.replace(b'"reason"', b'"reason":"expired","reason"'),  # duplicate key
        ATTEST.raw.replace(b'"v":1', b'"v":1.0'),
        ATTEST.raw.replace(b"{", b"{ ", 1),  # not canonical
        ATTEST.raw + b"\n",  # trailing data
        ATTEST.raw.replace(b'"v":1', b'"v":1,"v":1'),  # duplicate key
        ATTEST.raw.replace(b'"kind":"attest"', b'"kind":"att\\u0065st"'),  # escaped spelling
        b"[]",
        b"",
        b'{"v":NaN}',
        b"\xff",
    ],
)
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(EntryError):
        decode_entry(data)


def test_duplicate_roles_and_size_bound() -> None:
    ref = ATTEST.evidence[0]
    with pytest.raises(EntryError):
        type(ATTEST)(
            kind=EntryKind.ATTEST,
            time=T0,
            nonce=ATTEST.nonce,
            binding=ATTEST.binding,
            policy=ATTEST.policy,
            verifier="v",
            result=EAR,
            evidence=(ref, ref),
        )
    with pytest.raises(EntryError):
        decode_entry(b" " * (MAX_ENTRY_BYTES + 1))


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(ATTEST.raw) - 1), value=st.integers(0, 255))
def test_single_byte_changes(pos: int, value: int) -> None:
    _changed_entry(ATTEST, pos, value)


def _changed_entry(base: LogEntry, pos: int, value: int) -> LogEntry | None:
    """``base`` with byte ``pos`` set to ``value``, decoded; None if unchanged or refused. A
    change that still decodes must be a different, canonical entry (e.g. another digit)."""
    data = bytearray(base.raw)
    if data[pos] == value:
        return None
    data[pos] = value
    try:
        entry = decode_entry(bytes(data))
    except EntryError:
        return None
    assert entry.raw == bytes(data) and entry != base
    return entry


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, len(RELEASE.raw) - 1))
def test_truncation(cut: int) -> None:
    with pytest.raises(EntryError):
        decode_entry(RELEASE.raw[:cut])


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(REFUSED.raw) - 1), value=st.integers(0, 255))
def test_single_byte_changes_of_a_refusal(pos: int, value: int) -> None:
    """Any one-byte change of a refusal either fails to decode or is another canonical entry
    (never the same entry under a second spelling, never a release read from a refusal)."""
    data = bytearray(REFUSED.raw)
    if data[pos] == value:
        return
    data[pos] = value
    try:
        entry = decode_entry(bytes(data))
    except EntryError:
        return
    assert entry.raw == bytes(data) and entry != REFUSED
    assert entry.kind is EntryKind.RELEASE_REFUSED and entry.reason is not None


@settings(max_examples=200, deadline=None)
@given(
    nonce=st.binary(min_size=16, max_size=64),
    binding=st.binary(min_size=32, max_size=64),
    seconds=st.integers(0, 10**9),
    micro=st.integers(0, 999_999),
    model=st.from_regex(r"[ -~]{1,128}", fullmatch=True),
    reason=st.sampled_from(RefusalReason),
    key=st.binary(min_size=32, max_size=32),
)
def test_refusal_roundtrip(
    nonce: bytes,
    binding: bytes,
    seconds: int,
    micro: int,
    model: str,
    reason: RefusalReason,
    key: bytes,
) -> None:
    at = datetime(1990, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=micro)
    e = LogEntry(
        kind=EntryKind.RELEASE_REFUSED,
        time=at,
        nonce=nonce,
        binding=binding,
        policy=REFUSED.policy,
        verifier="lessee 0.1.0",
        result=EAR,
        model_id=model,
        recipient_key_sha256=key,
        reason=reason,
    )
    again = decode_entry(e.raw)
    assert again == e and again.raw == e.raw and again.reason is reason
    assert e.raw == _canonical(e._to_json())


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(RELEASE2.raw) - 1), value=st.integers(0, 255))
def test_single_byte_changes_of_a_version_2_release(pos: int, value: int) -> None:
    """A one-byte change of a version-2 release fails to decode or is another canonical
    version-2 entry: never read as version 1 (the fields would have to go) or as an attest."""
    entry = _changed_entry(RELEASE2, pos, value)
    assert entry is None or (entry.version == 2 and entry.kind is not EntryKind.ATTEST)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_random_bytes(data: bytes) -> None:
    with pytest.raises(LesseeError):
        decode_entry(data)


@settings(max_examples=200, deadline=None)
@given(
    nonce=st.binary(min_size=16, max_size=64),
    binding=st.binary(min_size=32, max_size=64),
    seconds=st.integers(0, 10**9),
    micro=st.integers(0, 999_999),
    model=st.from_regex(r"[ -~]{1,128}", fullmatch=True),
    manifest=st.none()
    | st.tuples(st.integers(0, MAX_MODEL_VERSION), st.binary(min_size=32, max_size=32)),
    kind=st.sampled_from([EntryKind.RELEASE, EntryKind.RELEASE_REFUSED]),
    reason=st.sampled_from(RefusalReason),
)
def test_release_roundtrip(
    nonce: bytes,
    binding: bytes,
    seconds: int,
    micro: int,
    model: str,
    manifest: tuple[int, bytes] | None,
    kind: EntryKind,
    reason: RefusalReason,
) -> None:
    """Releases and refusals of either version round-trip, and both encoders agree."""
    at = datetime(1990, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=micro)
    version, digest = manifest if manifest is not None else (None, None)
    e = type(RELEASE)(
        kind=kind,
        time=at,
        nonce=nonce,
        binding=binding,
        policy=RELEASE.policy,
        verifier="lessee 0.1.0",
        result=EAR,
        model_id=model,
        recipient_key_sha256=bytes(32),
        reason=reason if kind is EntryKind.RELEASE_REFUSED else None,
        model_version=version,
        manifest_sha256=digest,
    )
    again = decode_entry(e.raw)
    assert again == e and again.time == at and again.raw == e.raw
    assert (again.model_version, again.manifest_sha256) == (version, digest)
    assert again.version == (1 if manifest is None else 2)
    assert e.raw == _canonical(e._to_json())


# ---- the fast paths of decoding (issue 7): same bytes, same values, same errors ----------

_PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)


@settings(max_examples=300, deadline=None)
@given(
    verifier=_PRINTABLE.filter(lambda s: len(s) <= 128),
    model=_PRINTABLE.filter(lambda s: len(s) <= 128),
    role=st.from_regex(r"[a-z0-9][a-z0-9._-]{0,12}", fullmatch=True),
    result=st.sampled_from([EAR, "a.b.c", "a-_.b.c"]),
    size=st.integers(0, 64 * 1024 * 1024),
    kind=st.sampled_from(EntryKind),
    reason=st.sampled_from(RefusalReason),
    manifest=st.none()
    | st.tuples(st.integers(0, MAX_MODEL_VERSION), st.binary(min_size=32, max_size=32)),
)
def test_written_out_encoding_is_json_dumps(
    verifier: str,
    model: str,
    role: str,
    result: str,
    size: int,
    kind: EntryKind,
    reason: RefusalReason,
    manifest: tuple[int, bytes] | None,
) -> None:
    """``LogEntry._encode`` spells the entry exactly as ``json.dumps(sort_keys=True)`` does,
    quotes and backslashes included."""
    common = {
        "time": T0,
        "nonce": ATTEST.nonce,
        "binding": ATTEST.binding,
        "policy": ATTEST.policy,
        "verifier": verifier,
        "result": result,
    }
    ref = BlobRef(role, "application/octet-stream", bytes(range(32)), size)
    if manifest is not None and kind is not EntryKind.ATTEST:  # version 2
        common |= {"model_version": manifest[0], "manifest_sha256": manifest[1]}
    if kind is EntryKind.RELEASE:
        e = LogEntry(kind=kind, model_id=model, recipient_key_sha256=bytes(32), **common)
    elif kind is EntryKind.RELEASE_REFUSED:
        e = LogEntry(
            kind=kind, model_id=model, recipient_key_sha256=bytes(32), reason=reason, **common
        )
    else:
        other = BlobRef("x" + role, "application/xml", bytes(32), size // 2)
        e = LogEntry(kind=EntryKind.ATTEST, evidence=(ref,), collateral=(other,), **common)
    assert e.raw == _canonical(e._to_json())


_JWS_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab.-_Z9\n!é", max_size=12))
def test_plain_jws_is_the_strict_form_of_the_pattern(value: str) -> None:
    plain = is_compact_jws(value)
    assert plain == (_JWS_RE.fullmatch(value) is not None)
    assert not plain or _JWS_RE.match(value) is not None


def _strptime_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@settings(max_examples=500, deadline=None)
@given(
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z", fullmatch=True
    )
)
def test_time_read_field_by_field_is_strptime(value: str) -> None:
    """Valid or not (month 13, 30 February, second 60, year 0), the fast read of a canonical
    time answers what ``strptime`` answers."""
    try:
        expected: datetime | None = _strptime_time(value)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(EntryError, match="not a valid date and time"):
            _parse_time(value)
    else:
        assert _parse_time(value) == expected and _parse_time(value).tzinfo is UTC


def test_time_outside_the_canonical_ascii_shape_is_refused() -> None:
    # A final newline, and non-ASCII digits (which "\d" and strptime would read), are refused
    # by the pattern itself; a well-shaped but impossible date still reaches strptime.
    for value in ("2026-11-28T12:00:00.000000Z\n", "\u0662026-11-28T12:00:00.000000Z"):
        with pytest.raises(EntryError, match="time must be"):
            _parse_time(value)
    with pytest.raises(EntryError, match="not a valid date and time"):
        _parse_time("2026-02-30T12:00:00.000000Z")


def test_duplicate_key_names_the_first_one_repeated() -> None:
    with pytest.raises(EntryError, match="duplicate key 'a'"):
        decode_entry(b'{"a":1,"b":2,"b":3,"a":4}'.replace(b'"b":2,', b'"b":2,"a":0,'))


def test_cached_blob_references_never_stand_in_for_other_types() -> None:
    """A reference decoded once is reused only for the very same JSON values: ``true`` equals
    ``1`` as a dict key, yet a boolean size is still refused."""
    ok = {"media_type": "application/json", "role": "policy", "sha256": "00" * 32, "size": 1}
    first = BlobRef.from_json(dict(ok), "policy")
    assert BlobRef.from_json(dict(ok), "policy") is first
    with pytest.raises(EntryError, match="size must be an integer"):
        BlobRef.from_json(dict(ok, size=True), "policy")
    with pytest.raises(EntryError, match="size must be an integer"):
        BlobRef.from_json(dict(ok, size=1.0), "policy")


def test_blob_reference_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entry_module, "MAX_CACHED_REFS", 4)
    monkeypatch.setattr(entry_module, "_REF_CACHE", {})
    for i in range(10):
        ref = {"media_type": "application/json", "role": "policy", "sha256": "00" * 32, "size": i}
        assert BlobRef.from_json(ref, "policy").size == i
        assert len(entry_module._REF_CACHE) <= 4


@pytest.mark.parametrize("field", ["verifier", "model_id", "result", "role", "nonce", "time"])
def test_trailing_newline_in_a_field_is_refused(field: str) -> None:
    """A pattern's ``$`` also matches before a final newline; every field pattern is anchored
    with ``\\Z`` so ``"id\\n"`` is not read as ``"id"``-shaped (regression of issue #7 review)."""
    obj = json.loads((RELEASE if field == "model_id" else ATTEST).raw)
    if field == "role":
        obj["evidence"][0]["role"] += "\n"
    else:
        obj[field] += "\n"
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(LesseeError):
        decode_entry(raw)


@settings(max_examples=500, deadline=None)
@given(
    at=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    )
)
def test_format_time_is_strftime(at: datetime) -> None:
    """The written-out time is ``strftime``'s text, field for field, in UTC."""
    assert entry_module.format_time(at) == at.astimezone(UTC).strftime(entry_module._TIME_FORMAT)
