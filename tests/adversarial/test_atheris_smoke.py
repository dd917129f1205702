"""A short, bounded atheris run per binary target (the CI smoke; long runs: docs/security.md).

Each target runs ``fuzz_atheris.py`` in a subprocess for at most ``SMOKE_SECONDS`` (and
``SMOKE_RUNS`` executions), seeded with the real vectors and ``SMOKE_SEED_MUTANTS`` corpus
mutants. The run must end cleanly: exit status 0, no ``crash-*`` artifact, at least one
executed unit. Skipped, with the reason,
only when atheris is not importable (it comes with the ``dev`` extra in CI).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adversarial.fuzz_atheris import ALIASES
from tests.adversarial.targets import BY_NAME

try:
    import atheris  # noqa: F401

    HAVE_ATHERIS = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_ATHERIS = False

ROOT = Path(__file__).resolve().parents[2]
#: Wall-clock budget per target: 9 targets x ~3 s (+ ~1 s start-up each) keeps the file near
#: 30 s. Override with LESSEE_FUZZ_SMOKE_SECONDS for a longer local run.
SMOKE_SECONDS = int(os.environ.get("LESSEE_FUZZ_SMOKE_SECONDS", "2"))
#: Upper bound on executions, so a very fast target does not dominate the machine.
SMOKE_RUNS = 200_000
#: Corpus mutants added to the real seeds.
SMOKE_SEED_MUTANTS = 100
#: Hard limit on the subprocess, well above SMOKE_SECONDS (start-up, corpus writing).
SUBPROCESS_TIMEOUT = SMOKE_SECONDS + 60

pytestmark = pytest.mark.skipif(
    not HAVE_ATHERIS,
    reason="atheris is not importable (pip install atheris; CI gets it from the dev extra)",
)


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_atheris_smoke(alias: str, tmp_path: Path) -> None:
    assert BY_NAME[ALIASES[alias]].atheris
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    env = dict(
        os.environ, LESSEE_FUZZ_SEEDS=str(SMOKE_SEED_MUTANTS), LESSEE_FUZZ_WORKDIR=str(tmp_path)
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.adversarial.fuzz_atheris",
            alias,
            f"-max_total_time={SMOKE_SECONDS}",
            f"-runs={SMOKE_RUNS}",
            f"-artifact_prefix={artifacts}/",
            "-rss_limit_mb=1024",
            "-print_final_stats=1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    log = proc.stdout + proc.stderr
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert proc.returncode == 0 and not crashes, (
        f"{alias}: rc={proc.returncode} {crashes}\n{log[-3000:]}"
    )
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    assert runs is not None and int(runs.group(1)) > 0, log[-2000:]
    # Coverage counters exist only where Python code runs: the protobuf decoder is C (upb).
    assert "INITED" in log, log[-2000:]
