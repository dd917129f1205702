"""C2SP signed notes, checkpoints and real log heads (Go sumdb, static CT, Rekor v2)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import InputError, LesseeError
from attest.log import merkle, sth
from attest.log.checkpoint import (
    CheckpointError,
    format_checkpoint,
    parse_checkpoint,
    verify_checkpoint,
)
from attest.log.keys import load_verifier
from attest.log.note import (
    Ed25519Verifier,
    NoteError,
    NoteSignature,
    NoteVerificationError,
    format_note,
    parse_note,
    parse_vkey,
    sign_note,
    verify_note,
)
from tests.conftest import AUDIT
from tests.log.helpers import LOG_SIGNER, OTHER_SIGNER

C2SP = json.loads((AUDIT / "c2sp" / "signed-note-example.json").read_text())
HEADS = json.loads((AUDIT / "real-log-heads" / "real_log_heads.json").read_text())
REKOR = AUDIT / "rekor-v2-staging"


# ---- real vectors -------------------------------------------------------------------------


def test_c2sp_example_verifies() -> None:
    v = load_verifier(C2SP["vkey"])
    got = verify_note(C2SP["note"].encode(), [v])
    assert got.text == b"This is an example message.\n"
    assert [s.name for s in got.verified] == ["example.com/foo"]
    assert got.verified[0].key_id.hex() == "530d903a"
    assert got.unknown_signatures == 0
    # The vkey round-trips byte for byte.
    assert isinstance(v, Ed25519Verifier) and v.vkey() == C2SP["vkey"]


def test_c2sp_example_tampered_text_rejected() -> None:
    v = load_verifier(C2SP["vkey"])
    bad = C2SP["note"].replace("example message", "example massage").encode()
    with pytest.raises(NoteVerificationError) as exc:
        verify_note(bad, [v])
    assert exc.value.reason == "bad_signature"


def test_sumdb_checkpoint() -> None:
    sumdb = HEADS["sumdb"]
    signed = verify_checkpoint(sumdb["note"].encode(), load_verifier(sumdb["vkey"]))
    cp = signed.checkpoint
    assert cp.origin == "go.sum database tree"  # key name sum.golang.org differs: allowed
    assert cp.size == 6476701
    assert base64.b64encode(cp.root_hash).decode() == "mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk="
    assert signed.note.verified[0].name == "sum.golang.org"
    with pytest.raises(NoteVerificationError):
        verify_checkpoint(sumdb["note"].encode(), load_verifier(sumdb["vkey"]), expected_origin="x")


def test_static_ct_rome_checkpoint_rfc6962_signature() -> None:
    rome = HEADS["static_ct_rome"]
    v = load_verifier(rome["vkey"])
    assert isinstance(v, sth.RFC6962Verifier)
    assert v.spki_der == base64.b64decode(rome["spki_der_b64"])
    signed = verify_checkpoint(rome["note"].encode(), v)
    assert signed.checkpoint.size == 115474666
    ts = signed.note.verified[0].timestamp
    assert ts is not None and ts.year == 2024 and ts.month == 3
    # The signature covers size and root: change the size and it fails.
    bad = rome["note"].replace("115474666", "115474667").encode()
    with pytest.raises(NoteVerificationError):
        verify_checkpoint(bad, v)


def test_argon2024_rfc6962_sth() -> None:
    a = HEADS["rfc6962_sth_argon2024"]
    spki = parse_vkey(a["vkey"]).key
    s = a["sth"]
    kwargs = {
        "tree_size": s["tree_size"],
        "timestamp_ms": s["timestamp"],
        "root_hash": base64.b64decode(s["sha256_root_hash"]),
        "signature": base64.b64decode(s["tree_head_signature"]),
    }
    sth.verify_sth(spki, **kwargs)  # type: ignore[arg-type]
    kwargs["timestamp_ms"] = s["timestamp"] + 1
    with pytest.raises(NoteVerificationError):
        sth.verify_sth(spki, **kwargs)  # type: ignore[arg-type]


def _rekor() -> tuple[dict[str, object], Ed25519Verifier, bytes]:
    bundle = json.loads((REKOR / "staging-rekor-v2.txt.sigstore.json").read_text())
    root = json.loads((REKOR / "trusted_root.sigstage.json").read_text())
    tlog = next(t for t in root["tlogs"] if "log2025-alpha1" in t["baseUrl"])
    spki = base64.b64decode(tlog["publicKey"]["rawBytes"])
    key = serialization.load_der_public_key(spki)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    name = "log2025-alpha1.rekor.sigstage.dev"
    verifier = Ed25519Verifier.from_public_key(name, raw)
    # Sigstore's log ID for a Rekor v2 log is the full SHA-256 behind the C2SP key ID.
    log_id = base64.b64decode(tlog["logId"]["keyId"])
    assert log_id == hashlib.sha256(name.encode() + b"\n\x01" + raw).digest()
    entry = bundle["verificationMaterial"]["tlogEntries"][0]
    return entry, verifier, log_id


def test_rekor_v2_checkpoint_and_inclusion() -> None:
    entry, verifier, log_id = _rekor()
    proof = entry["inclusionProof"]
    assert isinstance(proof, dict)
    signed = verify_checkpoint(
        proof["checkpoint"]["envelope"].encode(),
        verifier,
        expected_origin="log2025-alpha1.rekor.sigstage.dev",
    )
    cp = signed.checkpoint
    assert signed.note.verified[0].key_id == log_id[:4]
    assert (cp.size, base64.b64encode(cp.root_hash).decode()) == (646, proof["rootHash"])
    leaf = merkle.leaf_hash(base64.b64decode(str(entry["canonicalizedBody"])))
    hashes = [base64.b64decode(h) for h in proof["hashes"]]
    merkle.verify_inclusion(int(proof["logIndex"]), cp.size, leaf, hashes, cp.root_hash)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(644, cp.size, leaf, hashes, cp.root_hash)


# ---- our own notes ------------------------------------------------------------------------


def test_sign_verify_roundtrip_and_unknown_keys() -> None:
    text = format_checkpoint("log.lessee.test/audit", 3, bytes(range(32))).text
    note = sign_note(text, [LOG_SIGNER])
    extra = OTHER_SIGNER.sign(text)  # same name, different key ID: unknown, ignored, counted
    stranger = NoteSignature("someone.else/key", b"\x01\x02\x03\x04", b"\x00" * 64)
    both = format_note(text, [*parse_note(note).signatures, extra, stranger])
    got = verify_note(both, [LOG_SIGNER.verifier()])
    assert got.unknown_signatures == 2 and len(got.verified) == 1
    # A known key whose signature is bad rejects the whole note, even beside a good one.
    forged = NoteSignature(OTHER_SIGNER.name, OTHER_SIGNER.key_id, b"\x00" * 64)
    with pytest.raises(NoteVerificationError):
        verify_note(
            format_note(text, [*parse_note(note).signatures, forged]),
            [LOG_SIGNER.verifier(), OTHER_SIGNER.verifier()],
        )
    with pytest.raises(NoteVerificationError) as exc:
        verify_note(note, [OTHER_SIGNER.verifier()])
    assert exc.value.reason == "no_trusted_signature"
    assert "seed" not in repr(LOG_SIGNER)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"text\n", "no blank line"),
        (b"text\n\n", "no signatures"),
        (b"text\n\n\xe2\x80\x94 a AAAAAA==\n", "key ID only, no signature"),
        (b"text\n\n- a AAAAAAAAAA==\n", "hyphen instead of em dash"),
        (b"text\n\n\xe2\x80\x94 a+b AAAAAAAAAA==\n", "plus in name"),
        (b"text\n\n\xe2\x80\x94  AAAAAAAAAA==\n", "empty name"),
        (b"text\n\n\xe2\x80\x94 a AAAAAAAAAA==", "no final newline"),
        (b"text\n\n\xe2\x80\x94 a AAAAAAAAAA\n", "unpadded base64"),
        (b"text\n\n\xe2\x80\x94 a AAAAAAAAAB==\n", "non-canonical base64 bits"),
        (b"te\txt\n\n\xe2\x80\x94 a AAAAAAAAAA==\n", "control character"),
        (b"te\xffxt\n\n\xe2\x80\x94 a AAAAAAAAAA==\n", "invalid UTF-8"),
        (b"t\n\n\xe2\x80\x94 a AAAAAAAAAA==\n\xe2\x80\x94 a AAAAAAAAAA==\n", "duplicate signature"),
        (
            b"t\n\n" + b"".join(b"\xe2\x80\x94 k%d AAAAAAAAAA==\n" % i for i in range(101)),
            "too many signatures",
        ),
    ],
)
def test_parse_note_rejects(data: bytes, why: str) -> None:
    with pytest.raises(NoteError):
        parse_note(data)


def test_last_blank_line_splits() -> None:
    text = b"line one\n\nline three\n"
    note = sign_note(text, [LOG_SIGNER])
    assert parse_note(note).text == text
    assert verify_note(note, [LOG_SIGNER.verifier()]).text == text


def test_vkey_rejections() -> None:
    good = LOG_SIGNER.verifier().vkey()
    assert load_verifier(good).key_id == LOG_SIGNER.key_id
    name, kid, b64 = good.split("+", 2)
    wrong_id = f"{name}+{'0' * 8}+{b64}"
    for bad in [
        wrong_id,
        f"{name}+{kid.upper()}+{b64}",
        f"{name}+{kid}",
        f"+{kid}+{b64}",
        f"{name}+{kid}+" + base64.b64encode(b"\x09" + bytes(32)).decode(),
    ]:
        with pytest.raises(NoteError):
            load_verifier(bad)


def _rfc6962_vkey(name: str, spki: bytes) -> str:
    log_id = hashlib.sha256(spki).digest()
    kid = hashlib.sha256(name.encode() + b"\n" + b"\x05" + log_id).digest()[:4]
    return f"{name}+{kid.hex()}+" + base64.b64encode(b"\x05" + spki).decode()


def test_rfc6962_vkey_with_unknown_algorithm_is_a_note_error() -> None:
    """A well-formed SPKI whose algorithm OID (1.2.3.4) cryptography does not know raises
    ``UnsupportedAlgorithm``, which is no ``ValueError``: it escaped ``load_verifier`` untyped."""
    oid = b"\x06\x03\x2a\x03\x04"
    alg = b"\x30" + bytes([len(oid)]) + oid
    bits = b"\x03\x03\x00\x01\x02"
    spki = b"\x30" + bytes([len(alg) + len(bits)]) + alg + bits
    with pytest.raises(NoteError, match="unsupported algorithm"):
        load_verifier(_rfc6962_vkey("example.com/log", spki))
    with pytest.raises(NoteError, match="not a DER SubjectPublicKeyInfo"):
        load_verifier(_rfc6962_vkey("example.com/log", b"\x30\x00"))


# ---- checkpoints --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"origin\n007\n" + base64.b64encode(bytes(32)) + b"\n",  # leading zeros
        b"origin\n-1\n" + base64.b64encode(bytes(32)) + b"\n",
        b"origin\n18446744073709551616\n" + base64.b64encode(bytes(32)) + b"\n",  # 2**64
        b"\n1\n" + base64.b64encode(bytes(32)) + b"\n",  # empty origin
        b"origin\n1\n" + base64.b64encode(bytes(31)) + b"\n",  # short root
        b"origin\n1\n" + base64.b64encode(bytes(32)) + b"\n\next\n",  # empty extension line
        b"origin\n1\n" + base64.b64encode(bytes(32)),  # no final newline
        b"origin\n1\n",
        b"origin\n 1\n" + base64.b64encode(bytes(32)) + b"\n",
    ],
)
def test_checkpoint_rejects(body: bytes) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint(body)


def test_checkpoint_roundtrip_with_extensions() -> None:
    cp = format_checkpoint("example.com/log", 2**64 - 1, bytes(range(32)), ["ext one", "ext two"])
    again = parse_checkpoint(cp.text)
    assert again == cp and again.extensions == ("ext one", "ext two")
    assert parse_checkpoint(b"o\n0\n" + base64.b64encode(merkle.EMPTY_ROOT) + b"\n").size == 0
    with pytest.raises(InputError):
        format_checkpoint("a\nb", 1, bytes(32))


# ---- hypothesis: hostile bytes give typed errors only ----------------------------------------

SIGNED = sign_note(
    format_checkpoint("log.lessee.test/audit", 42, bytes(range(32))).text, [LOG_SIGNER]
)


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(SIGNED) - 1), bit=st.integers(0, 7))
def test_note_single_bit_flips(pos: int, bit: int) -> None:
    data = bytearray(SIGNED)
    data[pos] ^= 1 << bit
    with pytest.raises(LesseeError):
        verify_checkpoint(bytes(data), LOG_SIGNER.verifier())


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, len(SIGNED) - 1))
def test_note_truncation(cut: int) -> None:
    with pytest.raises(LesseeError):
        verify_checkpoint(SIGNED[:cut], LOG_SIGNER.verifier())


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_note_random_bytes(data: bytes) -> None:
    try:
        note = parse_note(data)
    except NoteError:
        return
    assert note.raw == data and data.endswith(b"\n")
    try:
        parse_checkpoint(note.text)
    except CheckpointError:
        pass


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_checkpoint_random_text(text: str) -> None:
    try:
        cp = parse_checkpoint(text.encode())
    except CheckpointError:
        return
    assert format_checkpoint(cp.origin, cp.size, cp.root_hash, cp.extensions).text == cp.text


def test_key_name_check_remembers_only_valid_names() -> None:
    """``check_key_name`` remembers names that passed; names that fail are refused every time,
    also after valid names (and after the memory was cleared for being full)."""
    from attest.log import note

    check = note.check_key_name
    bad = ["", "a b", "a+b", "a\tb", "a\u2003b", "a\x01b", "x" * (note.MAX_KEY_NAME_BYTES + 1)]
    for _ in range(2):
        check("log.example/one")
        assert "log.example/one" in note._VALID_KEY_NAMES
        for name in bad:
            with pytest.raises(NoteError):
                check(name)
        assert not set(bad) & note._VALID_KEY_NAMES
    for i in range(note.MAX_REMEMBERED_KEY_NAMES + 5):
        check(f"name{i}")
    assert len(note._VALID_KEY_NAMES) <= note.MAX_REMEMBERED_KEY_NAMES
    for name in bad:
        with pytest.raises(NoteError):
            check(name)
