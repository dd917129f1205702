"""One log entry: what the broker decided, when, on which evidence, under which policy.

Encoding: canonical JSON, versions 1 and 2 (see docs/log.md §"Entry encoding" for the choice).

* UTF-8, no insignificant whitespace, object keys sorted, no floats, integers below 2**53,
  no duplicate keys: the RFC 8785 (JCS) rules for the subset of JSON we use. Every string we
  write is restricted to printable ASCII, where JCS and Python's ``json.dumps(sort_keys=True,
  separators=(",", ":"))`` agree byte for byte, so any JCS implementation reproduces the bytes.
* Decoding is strict by construction: parse (rejecting duplicate keys, NaN, floats), validate
  every field against the schema for its ``kind``, re-encode, and require the same bytes.
  Anything that is not the one canonical spelling of a valid entry is refused, so an entry's
  leaf hash identifies its meaning exactly.
* ``"v": 1`` comes first in every entry's meaning: a decoder refuses versions it does not know
  rather than guessing, and kinds it does not know just as loudly (``release_refused`` was
  added to version 1 as a new kind, not as version 2, for that reason: see docs/log.md).
* Version 2 is for ``release`` and ``release_refused`` entries only: they add which sealed
  model the decision was about, ``model_version`` (the registered version, an integer in
  ``0..MAX_MODEL_VERSION``) and ``manifest_sha256`` (the registered manifest's SHA-256). New
  *fields* in an existing kind are the case the version is for: a version-1 decoder would
  refuse the unknown keys anyway, but ``"v": 2`` says why, and a version-1 release (written
  before these fields existed) keeps its exact bytes and meaning, so old logs still verify and
  replay. Each version has its own closed key set: a version-1 release with the new fields, a
  version-2 release without them, and a version-2 attest entry (attest entries stay version 1)
  are all refused. The broker writes version 2 for every release and refusal.

Bytes (nonce, binding, digests) are lowercase hex; times are RFC 3339 UTC with exactly six
fractional digits. Evidence, collateral and the policy document are *not* inline: an entry
holds a ``BlobRef`` (role, media type, SHA-256, size) per item, and the store keeps the bytes
beside the log, content-addressed, so the leaf stays small and the blobs deduplicate.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from json.encoder import encode_basestring_ascii
from typing import Any

from attest.ear import is_compact_jws
from attest.errors import ParseError
from attest.jsonutil import object_without_duplicates
from attest.timeutil import require_aware

#: Version of attest entries, and of release and refusal entries from before version 2.
ENTRY_VERSION = 1
#: Version of release and refusal entries that name the sealed model (``model_version``,
#: ``manifest_sha256``): what the broker writes.
RELEASE_ENTRY_VERSION = 2
ENTRY_VERSIONS = (ENTRY_VERSION, RELEASE_ENTRY_VERSION)
#: Largest registered model version: the broker's bound, which is the sealed-weights format's
#: (``sealing.weights._format.MAX_MODEL_VERSION``, tested equal).
MAX_MODEL_VERSION = (1 << 32) - 1
#: Largest encoded entry. Entries hold digests, not blobs; the result JWT dominates.
MAX_ENTRY_BYTES = 256 * 1024
#: Largest signed result (an EAR JWT with a few submodules is a few kB).
MAX_RESULT_CHARS = 128 * 1024
#: Most evidence or collateral references in one entry (8 GPUs, 4 NVSwitches, CPU, each
#: with a chain, RIMs, OCSP responses and CRLs stays well under this).
MAX_BLOB_REFS = 256
#: Largest blob an entry may reference (CRLs are the biggest collateral, a few MB).
MAX_BLOB_SIZE = 64 * 1024 * 1024
#: Longest role, model id or verifier version.
MAX_LABEL_CHARS = 128
#: RFC 6838 caps each media-type name part at 127 characters.
MAX_MEDIA_TYPE_CHARS = 255
#: Nonces and bindings: at least 128 bits (unguessable), at most 64 bytes (report_data size).
MIN_NONCE_BYTES, MAX_NONCE_BYTES = 16, 64
MIN_BINDING_BYTES, MAX_BINDING_BYTES = 32, 64
SHA256_SIZE = 32
#: Blob references kept decoded (``BlobRef.from_json``): a log's policies and collateral are
#: a handful of blobs; each kept reference is a few hundred bytes.
MAX_CACHED_REFS = 1024
#: JSON integers above this lose precision in JavaScript and in JCS; sizes never need more.
MAX_JSON_INT = (1 << 53) - 1

_ROLE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*\Z")
_MEDIA_RE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*\Z")
_PRINTABLE_RE = re.compile(r"^[\x20-\x7e]+\Z")
_HEX_RE = re.compile(r"^(?:[0-9a-f]{2})+\Z")
_TIME_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
#: First year ``format_time`` writes itself (``strftime`` pads shorter years per platform).
_MIN_PLAIN_YEAR = 1000


class EntryError(ParseError):
    """Bytes or values that are not a valid, canonical log entry."""


class EntryKind(StrEnum):
    ATTEST = "attest"
    RELEASE = "release"
    #: A ReleaseKey the broker refused for a result it issued itself (the token verified with
    #: its own key). A new kind in version 1: a decoder that predates it refuses the entry by
    #: its kind (``entry_malformed``) instead of reading it as a release.
    RELEASE_REFUSED = "release_refused"


class RefusalReason(StrEnum):
    """Why the broker refused a release: the closed set of ``reason`` values, in the order
    ``Broker.release_key`` checks them (the replay reads that order: a refusal for one reason
    says every check before it passed), except ``expired`` for a token expired past the EAR's
    clock skew, which is refused before every other check (docs/log.md)."""

    UNKNOWN_RESULT = "unknown_result"
    MODEL_MISMATCH = "model_mismatch"
    NOT_AFFIRMING = "not_affirming"
    POLICY_CHANGED = "policy_changed"
    MANIFEST_PIN = "manifest_pin"
    EXPIRED = "expired"
    KEY_MISMATCH = "key_mismatch"
    RESULT_USED = "result_used"


_KINDS_TEXT = ", ".join(k.value for k in EntryKind)


def _label(value: object, name: str, pattern: re.Pattern[str], limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not pattern.match(value):
        raise EntryError(
            f"{name} must be 1-{limit} characters matching {pattern.pattern}", field=name
        )
    return value


def _hex(value: object, name: str, lo: int, hi: int) -> bytes:
    if not isinstance(value, str) or not _HEX_RE.match(value) or not lo * 2 <= len(value) <= hi * 2:
        raise EntryError(f"{name} must be {lo}-{hi} bytes of lowercase hex", field=name)
    return bytes.fromhex(value)


def _int(value: object, name: str, hi: int) -> int:
    if type(value) is not int or not 0 <= value <= hi:
        raise EntryError(f"{name} must be an integer in [0, {hi}]", field=name)
    return value


def format_time(at: datetime) -> str:
    """``at`` in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``: ``strftime(_TIME_FORMAT)``'s text.

    Written out with %-formatting for four-digit years (~0.7 us instead of ~2 us: every entry
    an auditor decodes is re-encoded to prove it canonical); the same fields, zero-padded as
    ``strftime`` pads them (tested against it). Earlier years take ``strftime`` itself, whose
    year padding is the platform's."""
    t = require_aware(at)
    if t.year < _MIN_PLAIN_YEAR:
        return t.strftime(_TIME_FORMAT)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 (the fastest spelling)
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.microsecond,
    )


def _parse_time(value: object) -> datetime:
    """The logged time: ``_TIME_RE`` admits exactly the canonical shape in ASCII digits, so it
    is read field by field (``strptime`` cost ~6 us an entry, a third of decoding one);
    ``datetime`` refuses the out-of-range values ``strptime`` refused, with the same error."""
    if not isinstance(value, str) or not _TIME_RE.match(value):
        raise EntryError("time must be YYYY-MM-DDTHH:MM:SS.ffffffZ", field="time")
    try:
        return datetime(
            int(value[0:4]),
            int(value[5:7]),
            int(value[8:10]),
            int(value[11:13]),
            int(value[14:16]),
            int(value[17:19]),
            int(value[20:26]),
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise EntryError("time is not a valid date and time", field="time") from exc


def _ref_json(ref: BlobRef) -> str:
    """``BlobRef.to_json`` as canonical JSON text (``LogEntry._encode``)."""
    return (
        f'{{"media_type":{encode_basestring_ascii(ref.media_type)},'
        f'"role":{encode_basestring_ascii(ref.role)},'
        f'"sha256":"{ref.sha256.hex()}","size":{ref.size}}}'
    )


@dataclass(frozen=True)
class BlobRef:
    """A blob kept beside the log: its role in the entry, media type, SHA-256 and size."""

    role: str
    media_type: str
    sha256: bytes
    size: int

    def __post_init__(self) -> None:
        _label(self.role, "role", _ROLE_RE, MAX_LABEL_CHARS)
        _label(self.media_type, "media_type", _MEDIA_RE, MAX_MEDIA_TYPE_CHARS)
        if len(self.sha256) != SHA256_SIZE:
            raise EntryError("blob digest must be 32 bytes", field="sha256")
        _int(self.size, "size", MAX_BLOB_SIZE)

    @classmethod
    def of(cls, role: str, media_type: str, data: bytes) -> BlobRef:
        """The reference for ``data``."""
        return cls(role, media_type, hashlib.sha256(data).digest(), len(data))

    def to_json(self) -> dict[str, Any]:
        return {
            "media_type": self.media_type,
            "role": self.role,
            "sha256": self.sha256.hex(),
            "size": self.size,
        }

    @classmethod
    def from_json(cls, obj: object, where: str) -> BlobRef:
        if not isinstance(obj, dict) or set(obj) != {"media_type", "role", "sha256", "size"}:
            raise EntryError(
                "blob reference must have exactly media_type, role, sha256, size", field=where
            )
        role, media_type, sha256, size = obj["role"], obj["media_type"], obj["sha256"], obj["size"]
        key = (role, media_type, sha256, size)
        exact = (
            type(role) is str
            and type(media_type) is str
            and type(sha256) is str
            and type(size) is int
        )
        if exact and (hit := _REF_CACHE.get(key)) is not None:
            return hit
        ref = cls(
            role=role,
            media_type=media_type,
            sha256=_hex(sha256, f"{where}.sha256", SHA256_SIZE, SHA256_SIZE),
            size=size,
        )
        if exact:
            if len(_REF_CACHE) >= MAX_CACHED_REFS:
                _REF_CACHE.clear()
            _REF_CACHE[key] = ref
        return ref


#: References ``BlobRef.from_json`` decoded, by their exact JSON values (plain ``str`` and
#: ``int`` only): an auditor decodes the same policy and collateral references in entry after
#: entry. Only references that decoded are kept, and a ``BlobRef`` is frozen, so a hit is the
#: value decoding would give. Bounded by ``MAX_CACHED_REFS``, emptied when full.
_REF_CACHE: dict[tuple[str, str, str, int], BlobRef] = {}


_COMMON_KEYS = {"v", "kind", "time", "nonce", "binding", "policy", "verifier", "result"}
_MANIFEST_KEYS = {"model_version", "manifest_sha256"}
#: The closed key set of each (kind, version); a pair not here is refused.
_RELEASE_KEYS = _COMMON_KEYS | {"model_id", "recipient_key_sha256"}
_REFUSAL_KEYS = _RELEASE_KEYS | {"reason"}
_KEYS = {
    (EntryKind.ATTEST, 1): _COMMON_KEYS | {"evidence", "collateral"},
    (EntryKind.RELEASE, 1): _RELEASE_KEYS,
    (EntryKind.RELEASE_REFUSED, 1): _REFUSAL_KEYS,
    (EntryKind.RELEASE, 2): _RELEASE_KEYS | _MANIFEST_KEYS,
    (EntryKind.RELEASE_REFUSED, 2): _REFUSAL_KEYS | _MANIFEST_KEYS,
}


@dataclass(frozen=True)
class LogEntry:
    """A decoded (or freshly built) entry; ``raw`` is its canonical encoding, the leaf data.

    ``attest``: the appraisal of one evidence set; ``evidence`` (at least one item) and
    ``collateral`` reference the bytes that were appraised. ``release``: a data key sealed to
    ``recipient_key_sha256`` for ``model_id`` on the strength of ``result``.
    ``release_refused``: the fields of the release that was asked for (``policy`` is the
    model's policy at the time, ``recipient_key_sha256`` the digest of the result's enclave
    key) and the ``reason`` it was refused; no key was released.

    ``model_version`` and ``manifest_sha256``: on release and refusal entries of version 2
    (both or neither; ``version`` follows from them), the model's registered version and
    sealed-manifest digest when the broker decided; None on version-1 and attest entries.
    """

    kind: EntryKind
    time: datetime
    nonce: bytes
    binding: bytes
    policy: BlobRef
    verifier: str
    result: str
    evidence: tuple[BlobRef, ...] = ()
    collateral: tuple[BlobRef, ...] = ()
    model_id: str | None = None
    recipient_key_sha256: bytes | None = None
    reason: RefusalReason | None = None
    model_version: int | None = None
    manifest_sha256: bytes | None = None
    raw: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EntryKind):
            raise EntryError(f"kind must be one of {_KINDS_TEXT}", field="kind")
        object.__setattr__(self, "time", require_aware(self.time, name="time"))
        if not MIN_NONCE_BYTES <= len(self.nonce) <= MAX_NONCE_BYTES:
            raise EntryError(
                f"nonce must be {MIN_NONCE_BYTES}-{MAX_NONCE_BYTES} bytes", field="nonce"
            )
        if not MIN_BINDING_BYTES <= len(self.binding) <= MAX_BINDING_BYTES:
            raise EntryError(
                f"binding must be {MIN_BINDING_BYTES}-{MAX_BINDING_BYTES} bytes", field="binding"
            )
        _label(self.verifier, "verifier", _PRINTABLE_RE, MAX_LABEL_CHARS)
        if len(self.result) > MAX_RESULT_CHARS or not is_compact_jws(self.result):
            raise EntryError("result must be a compact JWS (an EAR JWT)", field="result")
        refs = self.blob_refs()
        if len(self.evidence) > MAX_BLOB_REFS or len(self.collateral) > MAX_BLOB_REFS:
            raise EntryError(f"more than {MAX_BLOB_REFS} evidence or collateral references")
        roles = [r.role for r in refs]
        if len(set(roles)) != len(roles):
            raise EntryError("two blob references share a role", field="role")
        if self.kind is EntryKind.ATTEST:
            if not self.evidence:
                raise EntryError(
                    "an attest entry references at least one evidence blob", field="evidence"
                )
            if self.model_id is not None or self.recipient_key_sha256 is not None:
                raise EntryError("an attest entry has no model_id or recipient key")
            if self.model_version is not None or self.manifest_sha256 is not None:
                raise EntryError("an attest entry has no model_version or manifest_sha256")
        else:
            if self.evidence or self.collateral:
                raise EntryError(f"a {self.kind.value} entry carries no evidence or collateral")
            if self.model_id is None or self.recipient_key_sha256 is None:
                raise EntryError(
                    f"a {self.kind.value} entry needs model_id and recipient_key_sha256"
                )
            _label(self.model_id, "model_id", _PRINTABLE_RE, MAX_LABEL_CHARS)
            if len(self.recipient_key_sha256) != SHA256_SIZE:
                raise EntryError(
                    "recipient key digest must be 32 bytes", field="recipient_key_sha256"
                )
            if (self.model_version is None) != (self.manifest_sha256 is None):
                raise EntryError(
                    f"a {self.kind.value} entry has both model_version and manifest_sha256 "
                    "(version 2) or neither (version 1)"
                )
            if self.model_version is not None:
                _int(self.model_version, "model_version", MAX_MODEL_VERSION)
            if self.manifest_sha256 is not None and (
                type(self.manifest_sha256) is not bytes or len(self.manifest_sha256) != SHA256_SIZE
            ):
                raise EntryError("manifest digest must be 32 bytes", field="manifest_sha256")
        if self.kind is EntryKind.RELEASE_REFUSED:
            if not isinstance(self.reason, RefusalReason):
                raise EntryError("a release_refused entry needs a refusal reason", field="reason")
        elif self.reason is not None:
            raise EntryError(f"a {self.kind.value} entry has no reason", field="reason")
        encoded = self._encode()
        if len(encoded) > MAX_ENTRY_BYTES:
            raise EntryError(f"entry larger than {MAX_ENTRY_BYTES} bytes")
        if self.raw and self.raw != encoded:
            raise EntryError("entry bytes are not the canonical encoding of their content")
        object.__setattr__(self, "raw", encoded)

    @property
    def version(self) -> int:
        """The entry's ``"v"``: 2 for a release or refusal naming its sealed model, else 1."""
        return ENTRY_VERSION if self.model_version is None else RELEASE_ENTRY_VERSION

    def blob_refs(self) -> tuple[BlobRef, ...]:
        """Every blob this entry depends on: the policy, then evidence, then collateral."""
        return (self.policy, *self.evidence, *self.collateral)

    def _encode(self) -> bytes:
        """``_canonical(self._to_json())``, written out: the same bytes (tested against it on
        generated entries) for a fifth of the cost, which matters because every entry an
        auditor reads is re-encoded to prove it canonical. Keys in sorted order; every string
        goes through the JSON encoder's own escaping except those that cannot need it (hex,
        fixed labels, and the result, which ``is_compact_jws`` admitted: what the broker's ``verify_ear``
        admits, so every token it acted on can be logged)."""
        s = encode_basestring_ascii
        common_tail = f'"nonce":"{self.nonce.hex()}","policy":{_ref_json(self.policy)},'
        end = (
            f'"result":"{self.result}","time":{s(format_time(self.time))},'
            f'"v":{self.version},"verifier":{s(self.verifier)}}}'
        )
        if self.kind is EntryKind.ATTEST:
            text = (
                f'{{"binding":"{self.binding.hex()}",'
                f'"collateral":[{",".join(map(_ref_json, self.collateral))}],'
                f'"evidence":[{",".join(map(_ref_json, self.evidence))}],'
                f'"kind":"attest",{common_tail}{end}'
            )
        else:
            # ``reason`` sorts between ``policy`` and ``recipient_key_sha256``; its values are
            # fixed lowercase labels, which need no escaping. Version 2's ``manifest_sha256``
            # sorts before ``model_id`` and ``model_version`` after it (hex and an integer).
            key = self.recipient_key_sha256
            reason = f'"reason":"{self.reason.value}",' if self.reason is not None else ""
            if self.manifest_sha256 is not None:
                manifest = f'"manifest_sha256":"{self.manifest_sha256.hex()}",'
                version = f'"model_version":{self.model_version},'
            else:
                manifest = version = ""
            text = (
                f'{{"binding":"{self.binding.hex()}","kind":"{self.kind.value}",{manifest}'
                f'"model_id":{s(self.model_id or "")},{version}{common_tail}{reason}'
                f'"recipient_key_sha256":"{key.hex() if key is not None else ""}",{end}'
            )
        return text.encode("ascii")

    def _to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "v": self.version,
            "kind": self.kind.value,
            "time": format_time(self.time),
            "nonce": self.nonce.hex(),
            "binding": self.binding.hex(),
            "policy": self.policy.to_json(),
            "verifier": self.verifier,
            "result": self.result,
        }
        if self.kind is EntryKind.ATTEST:
            obj["evidence"] = [r.to_json() for r in self.evidence]
            obj["collateral"] = [r.to_json() for r in self.collateral]
        else:
            obj["model_id"] = self.model_id
            key = self.recipient_key_sha256
            obj["recipient_key_sha256"] = key.hex() if key is not None else ""
            if self.reason is not None:
                obj["reason"] = self.reason.value
            if self.manifest_sha256 is not None:
                obj["model_version"] = self.model_version
                obj["manifest_sha256"] = self.manifest_sha256.hex()
        return obj


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object, refusing a repeated key (the first one repeated is named)."""
    out, duplicate = object_without_duplicates(pairs)
    if duplicate is not None:
        raise EntryError(f"duplicate key {duplicate!r}")
    return out


def _no_float(text: str) -> Any:
    raise EntryError("floats are not allowed in entries")


def _no_constant(text: str) -> Any:
    raise EntryError(f"{text} is not JSON")


#: ``json.loads(text, object_pairs_hook=..., parse_float=..., parse_constant=...)`` builds this
#: decoder on every call; an auditor decodes every entry, so it is built once (it holds no
#: state between calls).
_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_float=_no_float, parse_constant=_no_constant
)


def _refs(value: object, name: str) -> tuple[BlobRef, ...]:
    if not isinstance(value, list) or len(value) > MAX_BLOB_REFS:
        raise EntryError(f"{name} must be a list of at most {MAX_BLOB_REFS} references", field=name)
    return tuple(BlobRef.from_json(v, f"{name}[{i}]") for i, v in enumerate(value))


def decode_entry(data: bytes) -> LogEntry:
    """Decode an entry, refusing anything that is not the canonical encoding of a valid one."""
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryError(f"entry larger than {MAX_ENTRY_BYTES} bytes")
    try:
        obj = _DECODER.decode(data.decode("ascii"))  # ASCII: no BOM can start it
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, EntryError):
            raise
        raise EntryError("entry is not ASCII JSON") from exc
    if not isinstance(obj, dict):
        raise EntryError("entry is not a JSON object")
    version = obj.get("v")
    if type(version) is not int or version not in ENTRY_VERSIONS:
        raise EntryError(f"unsupported entry version {version!r}", field="v")
    try:
        kind = EntryKind(str(obj.get("kind")))
    except ValueError as exc:
        raise EntryError(f"kind must be one of {_KINDS_TEXT}", field="kind") from exc
    keys = _KEYS.get((kind, version))
    if keys is None:
        raise EntryError(f"a {kind.value} entry is never version {version}", field="v")
    if set(obj) != keys:
        extra = sorted(set(obj) - keys)
        missing = sorted(keys - set(obj))
        raise EntryError(
            f"{kind.value} entry version {version} keys wrong (extra {extra}, missing {missing})"
        )
    common: dict[str, Any] = {
        "kind": kind,
        "time": _parse_time(obj["time"]),
        "nonce": _hex(obj["nonce"], "nonce", MIN_NONCE_BYTES, MAX_NONCE_BYTES),
        "binding": _hex(obj["binding"], "binding", MIN_BINDING_BYTES, MAX_BINDING_BYTES),
        "policy": BlobRef.from_json(obj["policy"], "policy"),
        "verifier": obj["verifier"],
        "result": obj["result"] if isinstance(obj["result"], str) else "",
        "raw": data,
    }
    if kind is EntryKind.ATTEST:
        return LogEntry(
            **common,
            evidence=_refs(obj["evidence"], "evidence"),
            collateral=_refs(obj["collateral"], "collateral"),
        )
    model_version: int | None = None
    manifest: bytes | None = None
    if version == RELEASE_ENTRY_VERSION:
        model_version = _int(obj["model_version"], "model_version", MAX_MODEL_VERSION)
        manifest = _hex(obj["manifest_sha256"], "manifest_sha256", SHA256_SIZE, SHA256_SIZE)
    return LogEntry(
        **common,
        model_id=obj["model_id"] if isinstance(obj["model_id"], str) else "",
        recipient_key_sha256=_hex(
            obj["recipient_key_sha256"], "recipient_key_sha256", SHA256_SIZE, SHA256_SIZE
        ),
        reason=_reason(obj["reason"]) if kind is EntryKind.RELEASE_REFUSED else None,
        model_version=model_version,
        manifest_sha256=manifest,
    )


def _reason(value: object) -> RefusalReason:
    if type(value) is not str:
        raise EntryError("reason must be a string", field="reason")
    try:
        return RefusalReason(value)
    except ValueError:
        raise EntryError(
            f"reason must be one of {', '.join(r.value for r in RefusalReason)}", field="reason"
        ) from None


def attest_entry(
    *,
    at: datetime,
    nonce: bytes,
    binding: bytes,
    policy: BlobRef,
    verifier: str,
    result: str,
    evidence: Sequence[BlobRef],
    collateral: Sequence[BlobRef] = (),
) -> LogEntry:
    """Build the entry for one appraisal."""
    return LogEntry(
        kind=EntryKind.ATTEST,
        time=at,
        nonce=nonce,
        binding=binding,
        policy=policy,
        verifier=verifier,
        result=result,
        evidence=tuple(evidence),
        collateral=tuple(collateral),
    )


def release_entry(
    *,
    at: datetime,
    nonce: bytes,
    binding: bytes,
    policy: BlobRef,
    verifier: str,
    result: str,
    model_id: str,
    recipient_key_sha256: bytes,
    model_version: int | None = None,
    manifest_sha256: bytes | None = None,
) -> LogEntry:
    """Build the entry for one key release: version 2 with ``model_version`` and
    ``manifest_sha256`` (what the broker writes), version 1 without them (as old logs hold)."""
    return LogEntry(
        kind=EntryKind.RELEASE,
        time=at,
        nonce=nonce,
        binding=binding,
        policy=policy,
        verifier=verifier,
        result=result,
        model_id=model_id,
        recipient_key_sha256=recipient_key_sha256,
        model_version=model_version,
        manifest_sha256=manifest_sha256,
    )


def release_refused_entry(
    *,
    at: datetime,
    nonce: bytes,
    binding: bytes,
    policy: BlobRef,
    verifier: str,
    result: str,
    model_id: str,
    recipient_key_sha256: bytes,
    reason: RefusalReason,
    model_version: int | None = None,
    manifest_sha256: bytes | None = None,
) -> LogEntry:
    """Build the entry for one refused key release (no key was released); version 2 with
    ``model_version`` and ``manifest_sha256``, version 1 without them (as for a release)."""
    return LogEntry(
        kind=EntryKind.RELEASE_REFUSED,
        time=at,
        nonce=nonce,
        binding=binding,
        policy=policy,
        verifier=verifier,
        result=result,
        model_id=model_id,
        recipient_key_sha256=recipient_key_sha256,
        reason=reason,
        model_version=model_version,
        manifest_sha256=manifest_sha256,
    )
