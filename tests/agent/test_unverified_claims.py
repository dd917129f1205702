"""The agent's reading of a result it cannot verify (no broker key pinned): typed errors only."""

from __future__ import annotations

import base64

import pytest

from agent.agent import _unverified_claims
from attest.errors import InputError


def _token(payload: bytes) -> str:
    return "e30." + base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + ".c2ln"


def test_hostile_payloads_are_input_errors() -> None:
    """A broker or relay chooses these bytes: a payload nested 60,000 deep raised
    RecursionError (json.loads), not InputError."""
    for payload in (b"[" * 60_000 + b"]" * 60_000, b'{"a": 1, "a": 2}', b"\xff", b"[1]"):
        with pytest.raises(InputError):
            _unverified_claims(_token(payload))
    assert _unverified_claims(_token(b'{"jti": "r-1"}')) == {"jti": "r-1"}
