# ruff: noqa: N999  (the file is named after the threat id, as tests/regressions requires)
"""T-RESULT-01 (fixed): a non-ASCII character in an EAR token escapes as
``UnicodeEncodeError`` from ``attest.ear.verify_ear``.

Found by tests/adversarial (``ear`` family, single bit flips that make a byte non-ASCII). The
token reaches the verifier as ``str`` (a protobuf ``string`` field or a CLI argument can hold any
Unicode); after splitting, ``verify_ear`` builds the signing input with
``f"{parts[0]}.{parts[1]}".encode("ascii")`` (attest/ear.py, the ``_verify_signature`` call),
which raises ``UnicodeEncodeError`` (a ``ValueError``) instead of ``ParseError``. Input:
inputs/ear_non_ascii_token.txt (veraison ``testJWT`` with character 40 of the payload replaced
by U+00E9).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attest.ear import public_key_from_jwk, verify_ear
from attest.errors import ParseError
from tests.conftest import AUDIT

TOKEN = (Path(__file__).parent / "inputs" / "ear_non_ascii_token.txt").read_text("utf-8")
KEY = public_key_from_jwk(
    json.loads((AUDIT / "ear/veraison_ear_jwts.json").read_text())["testPKey_jwk"]
)
NOW = datetime(2026, 11, 28, tzinfo=UTC)


def test_input_differs_from_the_real_token_by_one_non_ascii_character() -> None:
    real = json.loads((AUDIT / "ear/veraison_ear_jwts.json").read_text())["testJWT"]
    assert len(TOKEN) == len(real) and TOKEN[40] == "\u00e9" and not TOKEN.isascii()


def test_non_ascii_token_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        verify_ear(TOKEN, KEY, at=NOW, require_lessee_profile=False)
