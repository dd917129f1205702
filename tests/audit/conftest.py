"""Fixtures shared by the replay tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audit.helpers import Built, build


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Built]:
    """A log built by the real broker over SQLite, with the stand-in appraiser; closed after."""
    b = build(tmp_path, stand_in=True)
    yield b
    b.close()
