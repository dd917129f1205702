# ruff: noqa: N999  (the file is named after the threat id, as tests/regressions requires)
"""T-EVIDENCE-03 (fixed): deeply nested JSON escapes as ``RecursionError``.

Found by tests/adversarial (ops ``deep-array``, ``deep-object``, ``json-deep``). CPython's
``json`` decoder raises ``RecursionError`` past ~1000 levels; these loaders catch only
``JSONDecodeError``/``ValueError``, so a remote caller's 40 KB document becomes an untyped
exception (a stack trace, a crashed request handler) instead of ``InputError`` (exit 2 / a clean
status). ``attest/tdx/collateral.py`` and ``attest/log/entry.py`` already handle it (depth
pre-scan or ``except RecursionError``). Input: inputs/json_deep_nesting.json (20 000 x ``[``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attest.bundle import load_bundle
from attest.errors import InputError
from attest.nvidia.evidence import load_evidence
from attest.nvidia.rp_policy import load_nvidia_policy
from attest.policy import load_policy

INPUT = (Path(__file__).parent / "inputs" / "json_deep_nesting.json").read_bytes()

LOADERS: dict[str, Callable[[bytes], Any]] = {
    "attest.nvidia.evidence.load_evidence": load_evidence,
    "attest.policy.load_policy": load_policy,
    "attest.nvidia.rp_policy.load_nvidia_policy": load_nvidia_policy,
    "attest.bundle.load_bundle": load_bundle,
}


def test_input_is_deeper_than_the_recursion_limit() -> None:
    assert INPUT.startswith(b"[" * 20000) and len(INPUT) == 40000


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_deep_nesting_is_an_input_error(name: str) -> None:
    with pytest.raises(InputError):
        LOADERS[name](INPUT)
