"""C2SP tlog-cosignature/v1 (Ed25519, type 0x04): encoding per the spec, verification, quorum.

No public Ed25519 cosignature vector comes with its key (see PROVENANCE.md), so the
known-answer line below was produced by ``helpers.WITNESS`` (a committed test seed) over the
spec's own example checkpoint and timestamp; Ed25519 is deterministic, so it must not drift.
"""

from __future__ import annotations

import base64
import struct
from datetime import UTC, datetime, timedelta

import pytest

from attest.errors import InputError
from attest.log.checkpoint import format_checkpoint, verify_checkpoint
from attest.log.cosignature import CosignatureVerifier, cosigned_message
from attest.log.keys import load_verifier
from attest.log.note import (
    NoteSignature,
    NoteVerificationError,
    format_note,
    key_id,
    parse_note,
    sign_note,
    verify_note,
)
from tests.log.helpers import LOG_SIGNER, WITNESS, WITNESS2

SPEC_CHECKPOINT = (
    b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
SPEC_TIME = 1679315147
#: The signed message exactly as c2sp.org/tlog-cosignature prints it.
SPEC_MESSAGE = b"cosignature/v1\ntime 1679315147\n" + SPEC_CHECKPOINT
#: The spec's example witness line (no key published): we check its layout only.
SPEC_LINE_B64 = "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA=="
#: Known answer: WITNESS cosigning the spec checkpoint at the spec time.
KAT_LINE = (
    "— witness.lessee.test/w1 xV8jzQAAAABkGFDLqJaOpw+IPu2/h+6hQGu6Hyb6KSm3C9CcY9PuEI9Zcxj3sI8f"
    "DvRZgfNnVyoc4KTPx8vVrUtZeBp7IvOq9e2UCA==\n"
)
KAT_VKEY = "witness.lessee.test/w1+c55f23cd+BOI092FMqqCtrBRpTcgZ5uAlCJUQF+3i7MAkCvp8Hpdn"


def test_message_matches_spec_text() -> None:
    assert cosigned_message(SPEC_CHECKPOINT, SPEC_TIME) == SPEC_MESSAGE


def test_spec_example_line_layout() -> None:
    raw = base64.b64decode(SPEC_LINE_B64)
    assert len(raw) == 4 + 8 + 64  # key ID || u64 timestamp || Ed25519
    assert struct.unpack(">Q", raw[4:12])[0] == SPEC_TIME


def test_known_answer() -> None:
    at = datetime.fromtimestamp(SPEC_TIME, UTC)
    assert WITNESS.cosign(SPEC_CHECKPOINT, at).line() == KAT_LINE
    v = load_verifier(KAT_VKEY)
    assert isinstance(v, CosignatureVerifier) and v.vkey() == KAT_VKEY
    sig = parse_note(SPEC_CHECKPOINT + b"\n" + KAT_LINE.encode()).signatures[0]
    assert v.verify(SPEC_CHECKPOINT, sig.signature) == at
    # Key ID uses type byte 0x04: the same key as a plain Ed25519 note key has another ID.
    pk = v.public_key
    assert sig.key_id == key_id(WITNESS.name, 0x04, pk) != key_id(WITNESS.name, 0x01, pk)
    with pytest.raises(NoteVerificationError):
        v.verify(SPEC_CHECKPOINT.replace(b"20852163", b"20852164"), sig.signature)
    # Changing the timestamp bytes breaks the signature (the time is signed).
    bumped = struct.pack(">Q", SPEC_TIME + 1) + sig.signature[8:]
    with pytest.raises(NoteVerificationError):
        v.verify(SPEC_CHECKPOINT, bumped)


def _cosigned(at: datetime) -> bytes:
    text = format_checkpoint(LOG_SIGNER.name, 5, bytes(range(32))).text
    log_sig = parse_note(sign_note(text, [LOG_SIGNER])).signatures
    return format_note(text, [*log_sig, WITNESS.cosign(text, at), WITNESS2.cosign(text, at)])


def test_checkpoint_with_witness_quorum() -> None:
    at = datetime(2026, 11, 28, tzinfo=UTC)
    note = _cosigned(at)
    w1, w2 = WITNESS.verifier(), WITNESS2.verifier()
    signed = verify_checkpoint(note, LOG_SIGNER.verifier(), witnesses=[w1, w2], min_witnesses=2)
    assert signed.cosigners() == (WITNESS.name, WITNESS2.name)
    assert all(v.timestamp == at for v in signed.note.verified[1:])
    # Witness keys unknown to the verifier are counted, not trusted.
    plain = verify_checkpoint(note, LOG_SIGNER.verifier())
    assert plain.note.unknown_signatures == 2 and plain.cosigners() == ()
    with pytest.raises(NoteVerificationError) as exc:
        verify_checkpoint(note, LOG_SIGNER.verifier(), witnesses=[w1], min_witnesses=2)
    assert exc.value.reason == "witness_quorum"
    # Witnesses alone never stand in for the log's signature.
    with pytest.raises(InputError):
        verify_checkpoint(note, w1, witnesses=[w2])


def test_future_cosignature_rejected() -> None:
    at = datetime(2026, 11, 28, tzinfo=UTC)
    note = _cosigned(at)
    w1 = CosignatureVerifier(
        WITNESS.name, WITNESS.verifier().public_key, not_after=at - timedelta(1)
    )
    with pytest.raises(NoteVerificationError) as exc:
        verify_note(note, [w1])
    assert exc.value.reason == "cosignature_in_future"


def test_cosignature_wrong_length() -> None:
    text = format_checkpoint(LOG_SIGNER.name, 5, bytes(range(32))).text
    v = WITNESS.verifier()
    bad = format_note(text, [NoteSignature(v.name, v.key_id, b"\x00" * 64)])
    with pytest.raises(NoteVerificationError):
        verify_note(bad, [v])


def test_a_checkpoint_cosigned_by_a_witness_but_not_signed_by_the_log_is_refused() -> None:
    """Only the witness's line left: the note verifies (with the witness key given), but
    nothing the log signed is in it (mutation testing: no test failed without this check)."""
    at = datetime(2026, 11, 28, tzinfo=UTC)
    note = _cosigned(at)
    text, signatures = note.split(b"\n\n", 1)
    log_line = f"\u2014 {LOG_SIGNER.name} ".encode()
    lines = [line for line in signatures.splitlines(keepends=True) if not line.startswith(log_line)]
    assert len(lines) == 2  # the two witnesses' lines
    witness_only = text + b"\n\n" + b"".join(lines)
    with pytest.raises(NoteVerificationError) as exc:
        verify_checkpoint(witness_only, LOG_SIGNER.verifier(), witnesses=[WITNESS.verifier()])
    assert exc.value.reason == "no_trusted_signature"
