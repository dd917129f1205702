# ruff: noqa: N999  (the file is named after the threat id, as tests/regressions requires)
"""T-EVIDENCE-03 (fixed): a JSON integer over 4300 digits escapes as ``ValueError``.

Found by tests/adversarial (ops ``huge-number`` and ``json-type...='1111...``). Since CPython
3.11, ``int()`` refuses more than ``sys.get_int_max_str_digits()`` (4300) digits and ``json``
surfaces that as a bare ``ValueError`` (not ``JSONDecodeError``). These loaders catch only
``JSONDecodeError``, so the caller sees an untyped exception instead of ``InputError``.
``attest/nvidia/evidence.py`` catches ``ValueError`` and is fine. Input:
inputs/json_huge_integer.json (``{"version": 111...1}``, 5000 digits).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attest.bundle import load_bundle
from attest.errors import InputError
from attest.nvidia.rp_policy import load_nvidia_policy
from attest.policy import load_policy

INPUT = (Path(__file__).parent / "inputs" / "json_huge_integer.json").read_bytes()

LOADERS: dict[str, Callable[[bytes], Any]] = {
    "attest.policy.load_policy": load_policy,
    "attest.nvidia.rp_policy.load_nvidia_policy": load_nvidia_policy,
    "attest.bundle.load_bundle": load_bundle,
}


def test_input_has_more_digits_than_python_converts() -> None:
    import sys

    assert INPUT.count(b"1") > sys.get_int_max_str_digits()


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_huge_integer_is_an_input_error(name: str) -> None:
    with pytest.raises(InputError):
        LOADERS[name](INPUT)
