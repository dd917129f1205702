"""``lessee audit verify`` on exported bundles: clean, tampered in each way, unreadable."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.audit.bundle import (
    ENTRIES_NAME,
    BundleError,
    EntryRecord,
    encode_record,
    parse_entries,
)
from agent.audit.verify import verify_bundle_file
from agent.cli.main import main
from agent.logstore import LogStore
from attest.errors import LesseeError
from attest.log.checkpoint import format_checkpoint
from attest.log.merkle import leaf_hash
from attest.log.note import NoteSignature, format_note, parse_note, sign_note
from tests.log.helpers import LOG_SIGNER, OTHER_SIGNER, WITNESS, evidence_bytes, make_entry

REPO = Path(__file__).resolve().parents[2]

N = 10
Members = dict[str, bytes]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("audit")
    with LogStore(d / "log.db", LOG_SIGNER) as store:
        for i in range(N):
            store.append(*make_entry(i))  # sequential: one checkpoint per entry
        store.export_bundle(d / "clean.zip")
    (d / "log.vkey").write_text(LOG_SIGNER.verifier().vkey() + "\n")
    return d


def _members(path: Path) -> Members:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _write(path: Path, members: Members) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return path


def _records(m: Members) -> list[EntryRecord]:
    return list(parse_entries(m[ENTRIES_NAME]))


def _set_records(m: Members, recs: list[EntryRecord]) -> None:
    m[ENTRIES_NAME] = b"".join(encode_record(r.index, r.leaf_hash, r.data) for r in recs)


def _audit(
    clean: Path, bundle: Path, *extra: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, object]]:
    rc = main(
        ["audit", "verify", str(bundle), "--log-key", str(clean / "log.vkey"), "--json", *extra]
    )
    out = capsys.readouterr().out
    return rc, (json.loads(out) if out.strip() else {})


def _codes(report: dict[str, object]) -> set[tuple[str, object]]:
    findings = report["findings"]
    assert isinstance(findings, list)
    return {
        (f["code"], f["entry"] if f["entry"] is not None else f["checkpoint"]) for f in findings
    }


def _tamper(clean: Path, name: str, change: Callable[[Members], None]) -> Path:
    m = _members(clean / "clean.zip")
    change(m)
    return _write(clean / f"{name}.zip", m)


def test_clean_bundle_passes(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = _audit(clean, clean / "clean.zip", capsys=capsys)
    assert rc == 0 and report["ok"] is True and report["findings"] == []
    assert report["entries"] == N and report["tree_size"] == N
    assert report["checkpoints_verified"] == N + 1
    rc = main(["audit", "verify", str(clean / "clean.zip"), "--log-key", str(clean / "log.vkey")])
    assert rc == 0 and capsys.readouterr().out.startswith("OK: 10 entries")


def test_edited_entry(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change(m: Members) -> None:
        recs = _records(m)
        r = recs[4]
        recs[4] = EntryRecord(
            r.position, r.index, r.leaf_hash, r.data.replace(b"lessee 0.1.0", b"lessee 0.1.1")
        )
        _set_records(m, recs)

    rc, report = _audit(clean, _tamper(clean, "edited", change), capsys=capsys)
    codes = _codes(report)
    assert rc == 1
    assert ("entry_modified", 4) in codes
    assert {c for c, _ in codes} == {"entry_modified", "checkpoint_root_mismatch"}


def test_edited_entry_and_its_leaf_hash(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A careful forger also rewrites the recorded leaf hash: the signed roots still name it."""

    def change(m: Members) -> None:
        recs = _records(m)
        r = recs[4]
        data = r.data.replace(b"lessee 0.1.0", b"lessee 0.1.1")
        recs[4] = EntryRecord(r.position, r.index, leaf_hash(data), data)
        _set_records(m, recs)

    rc, report = _audit(clean, _tamper(clean, "edited2", change), capsys=capsys)
    assert rc == 1
    findings = report["findings"]
    assert isinstance(findings, list)
    first = next(f for f in findings if f["code"] == "checkpoint_root_mismatch")
    assert "entries 4..4" in first["message"]  # the first bad checkpoint pins it to entry 4
    assert "checkpoint_inconsistent" in {f["code"] for f in findings}


def test_deleted_entry(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change(m: Members) -> None:
        recs = _records(m)
        del recs[3]
        _set_records(m, recs)

    rc, report = _audit(clean, _tamper(clean, "deleted", change), capsys=capsys)
    codes = _codes(report)
    assert rc == 1 and ("entry_missing", 3) in codes
    assert not any(c == "entry_out_of_place" for c, _ in codes)  # later entries are not blamed


def test_deleted_last_entry(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change(m: Members) -> None:
        recs = _records(m)
        del recs[-1]
        _set_records(m, recs)

    rc, report = _audit(clean, _tamper(clean, "truncated", change), capsys=capsys)
    assert rc == 1
    assert "checkpoint_beyond_entries" in {c for c, _ in _codes(report)}


def test_reordered_entries(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change(m: Members) -> None:
        recs = _records(m)
        recs[2], recs[5] = recs[5], recs[2]
        _set_records(m, recs)

    rc, report = _audit(clean, _tamper(clean, "reordered", change), capsys=capsys)
    codes = _codes(report)
    assert rc == 1
    assert ("entry_out_of_place", 2) in codes and ("entry_out_of_place", 5) in codes


def test_reordered_contents_only(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change(m: Members) -> None:
        recs = _records(m)
        a, b = recs[2], recs[5]
        recs[2] = EntryRecord(a.position, a.index, a.leaf_hash, b.data)
        recs[5] = EntryRecord(b.position, b.index, b.leaf_hash, a.data)
        _set_records(m, recs)

    rc, report = _audit(clean, _tamper(clean, "swapped", change), capsys=capsys)
    codes = _codes(report)
    assert rc == 1 and ("entry_modified", 2) in codes and ("entry_modified", 5) in codes


def _forged(size: int, root: bytes, signer: object = LOG_SIGNER) -> bytes:
    cp = format_checkpoint(LOG_SIGNER.name, size, root)
    return sign_note(cp.text, [signer])  # type: ignore[list-item]


def test_forked_checkpoint(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The log itself signed a second, different root for size 5."""

    def change(m: Members) -> None:
        m["checkpoints/00000000000000000099.note"] = _forged(5, hashlib.sha256(b"fork").digest())

    rc, report = _audit(clean, _tamper(clean, "fork", change), capsys=capsys)
    codes = _codes(report)
    assert rc == 1
    assert ("checkpoint_fork", "00000000000000000099.note") in codes
    assert ("checkpoint_root_mismatch", "00000000000000000099.note") in codes


def test_previous_checkpoint(
    clean: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = _members(clean / "clean.zip")["checkpoints/00000000000000000004.note"]
    (tmp_path / "good.note").write_bytes(good)
    rc, report = _audit(
        clean,
        clean / "clean.zip",
        "--previous-checkpoint",
        str(tmp_path / "good.note"),
        capsys=capsys,
    )
    assert rc == 0, report
    # A checkpoint a client saw, from a history the log later rewrote.
    (tmp_path / "fork.note").write_bytes(_forged(4, hashlib.sha256(b"old history").digest()))
    (tmp_path / "ahead.note").write_bytes(_forged(N + 5, hashlib.sha256(b"future").digest()))
    (tmp_path / "alien.note").write_bytes(_forged(4, hashlib.sha256(b"x").digest(), OTHER_SIGNER))
    rc, report = _audit(
        clean,
        clean / "clean.zip",
        "--previous-checkpoint",
        str(tmp_path / "fork.note"),
        "--previous-checkpoint",
        str(tmp_path / "ahead.note"),
        "--previous-checkpoint",
        str(tmp_path / "alien.note"),
        capsys=capsys,
    )
    codes = _codes(report)
    assert rc == 1
    assert ("previous_checkpoint_inconsistent", str(tmp_path / "fork.note")) in codes
    assert ("previous_checkpoint_ahead", str(tmp_path / "ahead.note")) in codes
    assert ("previous_checkpoint_signature", str(tmp_path / "alien.note")) in codes


def test_replaced_blob(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = hashlib.sha256(evidence_bytes(6)).hexdigest()

    def change(m: Members) -> None:
        m[f"blobs/{digest}"] = evidence_bytes(6).replace(b"SNP", b"snp")

    rc, report = _audit(clean, _tamper(clean, "blob", change), capsys=capsys)
    assert rc == 1 and _codes(report) == {("blob_digest_mismatch", 6)}


def test_missing_and_extra_blob(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = hashlib.sha256(evidence_bytes(8)).hexdigest()

    def change(m: Members) -> None:
        del m[f"blobs/{digest}"]
        m[f"blobs/{hashlib.sha256(b'stray').hexdigest()}"] = b"stray"

    rc, report = _audit(clean, _tamper(clean, "noblob", change), capsys=capsys)
    codes = _codes(report)
    assert rc == 1 and ("blob_missing", 8) in codes
    assert "blob_unreferenced" in {c for c, _ in codes}


def test_bad_checkpoint_signature(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "checkpoints/00000000000000000007.note"

    def change(m: Members) -> None:
        note = bytearray(m[name])
        note[-10] = ord("A") if note[-10] != ord("A") else ord("B")
        m[name] = bytes(note)

    rc, report = _audit(clean, _tamper(clean, "badsig", change), capsys=capsys)
    assert rc == 1 and _codes(report) == {("checkpoint_signature", "00000000000000000007.note")}


def test_wrong_log_key(clean: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "other.vkey").write_text(OTHER_SIGNER.verifier().vkey())
    rc = main(
        ["audit", "verify", str(clean / "clean.zip"), "--log-key", str(tmp_path / "other.vkey")]
    )
    out = capsys.readouterr().out
    assert rc == 1 and "no_checkpoint" in out and "REJECTED" in out


def test_unreadable_inputs_exit_2(
    clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    key = str(clean / "log.vkey")
    assert main(["audit", "verify", str(tmp_path / "junk.zip"), "--log-key", key]) == 2
    assert main(["audit", "verify", str(tmp_path / "missing.zip"), "--log-key", key]) == 2
    (tmp_path / "bad.vkey").write_text("not a key\n")
    assert (
        main(["audit", "verify", str(clean / "clean.zip"), "--log-key", str(tmp_path / "bad.vkey")])
        == 2
    )
    m = _members(clean / "clean.zip")
    with zipfile.ZipFile(tmp_path / "deflated.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in m.items():
            z.writestr(name, data)
    assert main(["audit", "verify", str(tmp_path / "deflated.zip"), "--log-key", key]) == 2
    m2 = dict(m)
    m2["../evil"] = b"x"
    assert main(["audit", "verify", str(_write(tmp_path / "evil.zip", m2)), "--log-key", key]) == 2
    m3 = dict(m)
    m3[ENTRIES_NAME] = m3[ENTRIES_NAME][:-1]
    assert main(["audit", "verify", str(_write(tmp_path / "trunc.zip", m3)), "--log-key", key]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("lessee: error:") == 6


ENTRIES_BIN = b"".join(encode_record(i, leaf_hash(b"e%d" % i), b"e%d" % i) for i in range(3))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_entries_framing_random_bytes(data: bytes) -> None:
    try:
        recs = parse_entries(data)
    except BundleError:
        return
    assert b"".join(encode_record(r.index, r.leaf_hash, r.data) for r in recs) == data


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(1, len(ENTRIES_BIN) - 1))
def test_entries_framing_truncation(cut: int) -> None:
    try:
        recs = parse_entries(ENTRIES_BIN[:cut])
    except BundleError:
        return
    # Cutting exactly at a record boundary leaves whole records only.
    assert sum(struct.calcsize(">Q32sI") + len(r.data) for r in recs) == cut


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pos=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_bundle_bit_flips_never_pass_silently(clean: Path, pos: int, bit: int) -> None:
    """Any flipped bit in the bundle file is unreadable (exit 2) or a finding (exit 1)."""
    raw = bytearray((clean / "clean.zip").read_bytes())
    pos %= len(raw)
    raw[pos] ^= 1 << bit
    path = clean / f"flip-{pos}-{bit}.zip"
    path.write_bytes(bytes(raw))
    try:
        result = verify_bundle_file(path, LOG_SIGNER.verifier())
        if result.ok:
            # Only flips in ZIP metadata no reader uses (timestamps, "version made by") may pass:
            # every member must still hold exactly the exported bytes.
            assert _members(path) == _members(clean / "clean.zip")
    except LesseeError:
        pass
    finally:
        path.unlink()


def test_forked_checkpoint_is_checked_for_consistency_with_its_neighbour(
    clean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Consistency proofs are skipped only between views whose roots both equal the recomputed
    tree's: a forged root of size 5 next to the real one (same size, so the fork check only
    compares roots) must still be checked against the size-6 view that follows it."""

    def change(m: Members) -> None:
        m["checkpoints/00000000000000000099.note"] = _forged(5, hashlib.sha256(b"fork").digest())

    rc, report = _audit(clean, _tamper(clean, "fork-next", change), capsys=capsys)
    findings = report["findings"]
    assert rc == 1 and isinstance(findings, list)
    inconsistent = [f for f in findings if f["code"] == "checkpoint_inconsistent"]
    assert len(inconsistent) == 1
    assert "00000000000000000099.note" in inconsistent[0]["message"]


def _read_everything(path: Path) -> object:
    """Every member as ``Bundle`` reads it, or the error it raises (its text)."""
    from agent.audit.bundle import Bundle

    try:
        with Bundle(path) as b:
            blobs = {d: b.read_blob(d) for d in sorted(b.blob_digests())}
            return (b.manifest, b.records, b.checkpoints, blobs)
    except LesseeError as exc:
        return f"{type(exc).__name__}: {exc}"


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pos=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_member_reads_match_zipfile_on_damaged_bundles(
    clean: Path, pos: int, bit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Differential: the positional member reads give exactly what ``zipfile``'s own path
    gives -- the same bytes, or the same error with the same text -- on any flipped bit (a
    damaged local header, name, data or CRC), since anything they do not accept is left to
    ``zipfile``."""
    import agent.audit.bundle as bundle_module

    raw = bytearray((clean / "clean.zip").read_bytes())
    pos %= len(raw)
    raw[pos] ^= 1 << bit
    path = clean / f"diff-{pos}-{bit}.zip"
    path.write_bytes(bytes(raw))
    try:
        fast = _read_everything(path)
        with monkeypatch.context() as m:
            m.setattr(bundle_module, "_pread", None)
            slow = _read_everything(path)
    finally:
        path.unlink()
    assert fast == slow


def test_member_reads_check_the_crc(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob whose bytes no longer match the directory's CRC-32 is refused, as ``zipfile``
    refuses it, and the positional read is what was used on the clean file."""
    import agent.audit.bundle as bundle_module

    calls: list[bool] = []
    real = bundle_module.Bundle._stored_bytes

    def counting(self: bundle_module.Bundle, info: zipfile.ZipInfo) -> bytes | None:
        out = real(self, info)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(bundle_module.Bundle, "_stored_bytes", counting)
    assert not isinstance(_read_everything(clean / "clean.zip"), str)
    assert calls and all(calls)
    raw = bytearray((clean / "clean.zip").read_bytes())
    with zipfile.ZipFile(clean / "clean.zip") as z:
        info = next(i for i in z.infolist() if i.filename.startswith("blobs/"))
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start] ^= 0x01
    path = clean / "crc.zip"
    path.write_bytes(bytes(raw))
    try:
        result = _read_everything(path)
    finally:
        path.unlink()
    assert isinstance(result, str) and "Bad CRC-32" in result


#: A ZIP central-directory header (APPNOTE 4.3.12), the fields up to the name length:
#: signature, version made by, version needed to extract, flags, method, ...
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_CD_VERSION_NEEDED, _CD_FLAGS, _CD_NAME_LENGTH, _CD_EXTRA_LENGTH = 3, 5, 12, 13
_CD_COMMENT_LENGTH, _CD_LOCAL_OFFSET = 14, 18
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_LH_FLAGS, _LH_NAME_LENGTH = 3, 10


def _central_headers(raw: bytes) -> list[int]:
    """Offsets of every central-directory header, in member order (read from ``zipfile``'s own
    directory offset, not by searching for the signature, which member data could contain)."""
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        count = len(z.infolist())
        off = z.start_dir
    out = []
    for _ in range(count):
        assert raw[off : off + 4] == b"PK\x01\x02"
        out.append(off)
        fields = _CENTRAL.unpack_from(raw, off)
        off += _CENTRAL.size + sum(
            fields[i] for i in (_CD_NAME_LENGTH, _CD_EXTRA_LENGTH, _CD_COMMENT_LENGTH)
        )
    return out


def _patched(clean: Path, member: int, field: int, value: int, *, local: bool = False) -> bytes:
    """The clean bundle with one header field of member ``member`` set to ``value``."""
    raw = bytearray((clean / "clean.zip").read_bytes())
    off = _central_headers(bytes(raw))[member]
    header = _CENTRAL
    if local:
        off = _CENTRAL.unpack_from(raw, off)[_CD_LOCAL_OFFSET]
        header = _LOCAL
    fields = list(header.unpack_from(raw, off))
    fields[field] = value
    header.pack_into(raw, off, *fields)
    return bytes(raw)


def _flag_value(clean: Path, member: int, bit: int) -> int:
    raw = (clean / "clean.zip").read_bytes()
    return int(_CENTRAL.unpack_from(raw, _central_headers(raw)[member])[_CD_FLAGS]) | bit


def _unreadable_cases(clean: Path) -> dict[str, bytes]:
    """Bundles ``zipfile`` refuses with something other than ``BadZipFile``/``OSError``."""
    with zipfile.ZipFile(clean / "clean.zip") as z:
        names = [i.filename for i in z.infolist()]
    blob = next(i for i, n in enumerate(names) if n.startswith("blobs/"))
    cases = {
        # "Version needed to extract" 10.0 (zipfile reads <= 6.3): NotImplementedError at open.
        "version": _patched(clean, 0, _CD_VERSION_NEEDED, 100),
    }
    for bit, what in ((0x1, "encrypted"), (0x20, "patched"), (0x40, "strong")):
        for member in (0, blob):
            # zipfile.open would raise NotImplementedError (0x20, 0x40) or RuntimeError (0x1).
            cases[f"{what}-{names[member]}"] = _patched(
                clean, member, _CD_FLAGS, _flag_value(clean, member, bit)
            )
    # A name flagged UTF-8 that is not: UnicodeDecodeError (a ValueError) while the directory
    # is read (central header), or while the member is opened (local header of a blob, read
    # by ``zipfile`` once the positional read declines it).
    for local in (False, True):
        raw = bytearray(
            _patched(
                clean,
                blob,
                _LH_FLAGS if local else _CD_FLAGS,
                _flag_value(clean, blob, 0x800),
                local=local,
            )
        )
        central = _central_headers(bytes(raw))[blob]
        if local:
            start = _CENTRAL.unpack_from(raw, central)[_CD_LOCAL_OFFSET] + _LOCAL.size
        else:
            start = central + _CENTRAL.size
        raw[start + len("blobs/")] = 0xFF
        cases[f"utf8-{'local' if local else 'central'}"] = bytes(raw)
    return cases


def test_unsupported_zip_features_are_unreadable_bundles(
    clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every way ``zipfile`` can refuse an archive -- including ``NotImplementedError`` (version
    needed to extract above 6.3, flag bits 5 and 6) and ``ValueError`` (a bad UTF-8 name) --
    is a ``BundleError``: exit 2 from ``lessee audit verify``, never an internal error."""
    from agent.audit.bundle import Bundle

    key = str(clean / "log.vkey")
    cases = _unreadable_cases(clean)
    assert len(cases) == 9
    for name, raw in cases.items():
        path = tmp_path / f"{name.replace('/', '_')}.zip"
        path.write_bytes(raw)
        # Both ways a blob is read (whole, or streamed for its digest) report it.
        for read in (Bundle.read_blob, Bundle.blob_sha256):
            with pytest.raises(BundleError), Bundle(path) as b:
                for digest in b.blob_digests():
                    read(b, digest)
        capsys.readouterr()
        assert main(["audit", "verify", str(path), "--log-key", key]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("lessee: error:") and "internal error" not in err, (name, err)


def test_header_bit_flips_never_escape_as_internal_errors(clean: Path) -> None:
    """Exhaustive over the fields ``zipfile`` interprets: every bit of the first two members'
    central-directory and local headers and of the end-of-central-directory record, flipped,
    gives a ``LesseeError`` or a bundle whose members are byte-for-byte the exported ones
    (a flip in a field no reader uses) -- never another exception."""
    raw = (clean / "clean.zip").read_bytes()
    original = _members(clean / "clean.zip")
    central = _central_headers(raw)[:2]
    spans = [(off, _CENTRAL.size) for off in central]
    spans += [(_CENTRAL.unpack_from(raw, off)[_CD_LOCAL_OFFSET], _LOCAL.size) for off in central]
    spans.append((raw.rindex(b"PK\x05\x06"), 22))
    path = clean / "header-flip.zip"
    flipped = 0
    try:
        for start, size in spans:
            for pos in range(start, start + size):
                for bit in range(8):
                    b = bytearray(raw)
                    b[pos] ^= 1 << bit
                    path.write_bytes(bytes(b))
                    flipped += 1
                    try:
                        result = verify_bundle_file(path, LOG_SIGNER.verifier())
                    except LesseeError:
                        continue
                    if result.ok:
                        assert _members(path) == original, (pos, bit)
    finally:
        path.unlink(missing_ok=True)
    assert flipped == 8 * (2 * _CENTRAL.size + 2 * _LOCAL.size + 22)


def _cosign(note: bytes, *lines: NoteSignature) -> bytes:
    parsed = parse_note(note)
    return format_note(parsed.text, [*parsed.signatures, *lines])


def test_witness_cosignatures_are_verified_when_the_auditor_names_the_witness(
    clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """c2sp.org/tlog-cosignature: a cosignature from a witness the auditor pins is checked; a
    forged one names its checkpoint and fails the audit (exit 1), a valid one is counted.
    Without ``--witness-key`` cosignatures are from unknown keys and only counted by the note
    parser, as the signed-note spec says."""
    at = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)
    good_name, bad_name = (f"checkpoints/{i:020d}.note" for i in (N, N - 1))

    def change(m: Members) -> None:
        text = parse_note(m[good_name]).text
        m[good_name] = _cosign(m[good_name], WITNESS.cosign(text, at))
        other = parse_note(m[bad_name]).text
        line = WITNESS.cosign(other, at)
        forged = NoteSignature(line.name, line.key_id, line.signature[:-1] + b"\x00")
        m[bad_name] = _cosign(m[bad_name], forged)

    bundle = _tamper(clean, "cosigned", change)
    (tmp_path / "w1.vkey").write_text(WITNESS.verifier().vkey() + "\n")
    # Unpinned: the log's own signatures verify, the witness lines are not the auditor's trust.
    rc, report = _audit(clean, bundle, capsys=capsys)
    assert rc == 0 and report["witness_cosignatures"] == 0, report
    rc, report = _audit(clean, bundle, "--witness-key", str(tmp_path / "w1.vkey"), capsys=capsys)
    assert rc == 1
    assert _codes(report) == {("checkpoint_cosignature", f"{N - 1:020d}.note")}
    assert report["witness_cosignatures"] == 1
    # The forged cosignature does not cost the checkpoint its log signature: it is still used.
    assert report["checkpoints_verified"] == N + 1
    # A key that is not a cosigner (type 0x04) is refused as input, not silently ignored.
    (tmp_path / "log-as-witness.vkey").write_text(LOG_SIGNER.verifier().vkey() + "\n")
    key, bad = str(clean / "log.vkey"), str(tmp_path / "log-as-witness.vkey")
    assert main(["audit", "verify", str(bundle), "--log-key", key, "--witness-key", bad]) == 2
    assert "not a tlog-cosignature" in capsys.readouterr().err


def test_a_witness_key_given_as_the_log_key_is_bad_input(
    clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cosigner key can never sign a checkpoint for the log, so ``--log-key`` naming one is a
    mistake in the input (exit 2), not one finding per checkpoint (exit 1)."""
    (tmp_path / "w1.vkey").write_text(WITNESS.verifier().vkey() + "\n")
    args = ["audit", "verify", str(clean / "clean.zip"), "--log-key", str(tmp_path / "w1.vkey")]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and "cannot stand in for the log's key" in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")
@pytest.mark.parametrize("command", ["verify", "replay"])
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory"])
def test_a_bundle_path_that_is_not_a_regular_file_is_refused_at_once(
    clean: Path, tmp_path: Path, command: str, kind: str
) -> None:
    """Review: ``audit verify|replay /dev/zero`` read (and allocated) until memory ran out, and
    a FIFO blocked in ``open`` until a writer came: any path went to ``zipfile``. Now only a
    regular file is opened as a bundle: exit 2 at once, one line naming the path. A real
    subprocess with a timeout, so a regression fails instead of hanging the suite."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    path = {"dev-zero": Path("/dev/zero"), "fifo": tmp_path / "fifo", "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    argv = ["audit", command, str(path), "--log-key", str(clean / "log.vkey")]
    if command == "replay":
        pem = tmp_path / "verifier.pem"
        pem.write_bytes(
            ed25519.Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
        argv += ["--verifier-key", str(pem), "--workers", "1", "--quiet"]
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli.main", *argv],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"lessee: error: {path}: ") and proc.stderr.count("\n") == 1
    assert "internal error" not in proc.stderr
    assert time.monotonic() - start < 30


_ZIP_END = struct.Struct("<4s4H2LH")
_CD_COMPRESSED_SIZE, _CD_SIZE = 10, 11


def _stored_zip(members: list[tuple[str, bytes, int | None]], tail: bytes = b"") -> bytes:
    """A STORED ZIP written by hand: each (name, data, offset): ``offset`` None appends the
    member (local header, name, data); an int points its directory record at an earlier local
    header instead, whose data it then shares. ``tail`` goes after the last member."""
    body = bytearray()
    records: list[tuple[str, int, int, int]] = []
    for name, data, shared in members:
        nb = name.encode()
        crc = zlib.crc32(data)
        offset = len(body) if shared is None else shared
        if shared is None:
            body += _LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, 0, crc, len(data), len(data),
                                    len(nb), 0) + nb + data  # fmt: skip
        records.append((name, offset, crc, len(data)))
    body += tail
    directory = bytearray()
    for name, offset, crc, size in records:
        nb = name.encode()
        directory += _CENTRAL.pack(b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, crc, size, size,
                                       len(nb), 0, 0, 0, 0, 0o644 << 16, offset) + nb  # fmt: skip
    end = _ZIP_END.pack(
        b"PK\x05\x06", 0, 0, len(records), len(records), len(directory), len(body), 0
    )
    return bytes(body) + bytes(directory) + end


def test_members_that_share_bytes_are_refused(clean: Path, tmp_path: Path) -> None:
    """ZIP lets two directory records point at the same bytes, and each member passed its own
    checks (STORED, size, CRC): many checkpoint members over one shared 256 KiB window made a
    1 MB bundle cost the auditor gigabytes before any signature was checked. Members must lie
    end to end, before the central directory, so their data is never more than the file."""
    from agent.audit.bundle import Bundle

    with zipfile.ZipFile(clean / "clean.zip") as z:
        kept = [(i.filename, z.read(i)) for i in z.infolist()]
    plain = [(name, data, None) for name, data in kept]
    (tmp_path / "rewritten.zip").write_bytes(_stored_zip(plain))
    with Bundle(tmp_path / "rewritten.zip") as b:  # the hand-written form reads as exported
        assert len(b.checkpoints) == N + 1
    assert verify_bundle_file(tmp_path / "rewritten.zip", LOG_SIGNER.verifier()).ok
    # A second record for the first checkpoint's bytes, under another checkpoint name.
    first = next(name for name, _ in kept if name.startswith("checkpoints/"))
    note = dict(kept)[first]
    offset = _central_offsets(tmp_path / "rewritten.zip")[first]
    shared = [*plain, ("checkpoints/99999999999999999999.note", note, offset)]
    (tmp_path / "shared.zip").write_bytes(_stored_zip(shared))
    with pytest.raises(BundleError, match="overlaps member"):
        Bundle(tmp_path / "shared.zip")
    # A member whose data would run into the central directory.
    raw = bytearray(_stored_zip(plain))
    last = _central_headers(bytes(raw))[-1]
    fields = list(_CENTRAL.unpack_from(raw, last))
    fields[_CD_SIZE] += 64  # the directory says the last member is 64 bytes longer
    fields[_CD_COMPRESSED_SIZE] += 64
    _CENTRAL.pack_into(raw, last, *fields)
    (tmp_path / "into-directory.zip").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="central directory"):
        Bundle(tmp_path / "into-directory.zip")


def _central_offsets(path: Path) -> dict[str, int]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: i.header_offset for i in z.infolist()}


#: The end-of-central-directory record, its ZIP64 locator and the ZIP64 record (APPNOTE 4.3).
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _zip64_record(count: int, directory_bytes: int, directory_at: int) -> bytes:
    return _ZIP64_EOCD.pack(b"PK\x06\x06", _ZIP64_EOCD.size - 12, 45, 45, 0, 0, count, count,
                            directory_bytes, directory_at)  # fmt: skip


def _with_zip64_end(raw: bytes, *, count: int, directory_bytes: int) -> bytes:
    """``raw`` (one classic end record at its end) with a ZIP64 end record and locator put
    before that end record, which then defers to them (0xFFFF entries)."""
    fields = list(_EOCD.unpack(raw[-_EOCD.size :]))
    body = raw[: -_EOCD.size]
    record = _zip64_record(count, directory_bytes, fields[6])
    locator = _ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, len(body), 1)
    fields[3] = fields[4] = 0xFFFF
    return body + record + locator + _EOCD.pack(*fields)


def _directory_of(records: int) -> bytes:
    """``records`` central-directory records of one-byte names, all at offset 0."""
    one = _CENTRAL.pack(b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0)
    return (one + b"x") * records


def _disguised_directories(records: int) -> dict[str, bytes]:
    """Archives whose end records once told the pre-check less than ``zipfile`` then read:
    a classic record declaring one small member before a ZIP64 record (``zipfile`` uses the
    ZIP64 record whenever a locator precedes the end record), and a locator pointing at a
    decoy ZIP64 record (``zipfile`` reads the one just before the locator)."""
    directory = _directory_of(records)
    real = _zip64_record(records, len(directory), 0)
    locator = _ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, len(directory), 1)
    small = _EOCD.pack(b"PK\x05\x06", 0, 0, 1, 1, 48, 0, 0)
    decoy = _zip64_record(1, 48, _ZIP64_EOCD.size)
    decoy_locator = _ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, 0, 1)
    deferring = _EOCD.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    real_after_decoy = _zip64_record(records, len(directory), len(decoy))
    return {
        "classic-small": directory + real + locator + small,
        "locator-decoy": decoy + directory + real_after_decoy + decoy_locator + deferring,
    }


def test_a_directory_too_large_for_a_bundle_is_refused_before_it_is_read(
    clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The member count was checked after ``zipfile`` had built an object per directory
    record (a 56 MB file of 1.2 million records took 0.5 GB first): the end records' count and
    the directory's size are checked before, read as ``zipfile`` reads them (the bound is
    lowered here so that a few records stand for a million)."""
    from agent.audit import bundle as bundle_module
    from agent.audit.bundle import Bundle

    with zipfile.ZipFile(clean / "clean.zip") as z:
        plain = [(i.filename, z.read(i), None) for i in z.infolist()]
    raw = _stored_zip(plain)
    honest = _with_zip64_end(raw, count=len(plain), directory_bytes=_end_fields(raw)[5])
    (tmp_path / "zip64.zip").write_bytes(honest)
    with Bundle(tmp_path / "zip64.zip") as b:  # a ZIP64 end record as such is fine
        assert len(b.records) == N
    limit = 8
    monkeypatch.setattr(bundle_module, "MAX_MEMBERS", limit)
    real_zipfile = zipfile.ZipFile

    def parsed(*args: object, **kwargs: object) -> zipfile.ZipFile:
        raise AssertionError("zipfile parsed a directory the pre-check should have refused")

    cases = {
        "count": _with_zip64_end(raw, count=limit + 1, directory_bytes=_end_fields(raw)[5]),
        "size": _with_zip64_end(raw, count=3, directory_bytes=len(raw) + 1),
        **_disguised_directories(limit + 1),
    }
    monkeypatch.setattr(zipfile, "ZipFile", parsed)
    for name, data in cases.items():
        (tmp_path / f"{name}.zip").write_bytes(data)
        with pytest.raises(BundleError, match=r"members|central directory"):
            Bundle(tmp_path / f"{name}.zip")
    monkeypatch.setattr(zipfile, "ZipFile", real_zipfile)


def _end_fields(raw: bytes) -> tuple[Any, ...]:
    """The classic end-of-central-directory record's fields (5: the directory's size)."""
    return tuple(_EOCD.unpack(raw[-_EOCD.size :]))


@pytest.mark.parametrize(
    "manifest",
    [b"[" * 30_000 + b"]" * 30_000, b'{"format": 1, "format": 2}'],
    ids=["deep", "duplicate"],
)
def test_a_hostile_manifest_is_an_unreadable_bundle(
    clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], manifest: bytes
) -> None:
    """The manifest was read with ``json.loads``: 30,000 levels of nesting (under its 64 KiB
    bound) raised RecursionError, an internal error (exit 1) instead of exit 2."""
    from agent.audit.bundle import MANIFEST_NAME

    path = tmp_path / "hostile.zip"
    with zipfile.ZipFile(clean / "clean.zip") as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = manifest if info.filename == MANIFEST_NAME else src.read(info)
            out.writestr(info, data)
    assert main(["audit", "verify", str(path), "--log-key", str(clean / "log.vkey")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lessee: error:") and "manifest" in err and "internal" not in err
