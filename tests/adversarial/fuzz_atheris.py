"""Coverage-guided fuzzing of the binary parsers with atheris (libFuzzer for Python).

    python -m tests.adversarial.fuzz_atheris TARGET [libFuzzer flags] [CORPUS_DIR ...]
    python -m tests.adversarial.fuzz_atheris --list

TARGET is a name from tests/adversarial/targets.py marked ``atheris=True`` (or a short alias:
spdm, snp, tdx, ocsp, shard, record, entry, bundle, logproof, protobuf). ``attest``, ``sealing`` and
``agent`` are instrumented for coverage. With no CORPUS_DIR the run is seeded with the real
vectors plus ``LESSEE_FUZZ_SEEDS`` (default 200) mutants from corpus.py, written to a fresh
temporary directory (under ``LESSEE_FUZZ_WORKDIR`` if set; libFuzzer adds what it finds
there). The protobuf target decodes in C (upb), so libFuzzer sees no coverage there and it runs
as a plain random/mutation fuzzer.

``TestOneInput`` fails (and libFuzzer saves the input as ``crash-*`` under
``-artifact_prefix``) when the target raises anything but its typed errors, or accepts an input
whose fingerprint differs from every real seed (a verifier passing tampered bytes). A crash is
turned into a regression test under tests/regressions/ named after the threat.

Long run (documented in docs/security.md), e.g. one hour per target on all cores:

    python -m tests.adversarial.fuzz_atheris spdm -max_total_time=3600 -jobs=8 -workers=8 \\
        -artifact_prefix=fuzz-artifacts/ fuzz-corpus/spdm
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

#: Short names for the command line.
ALIASES = {
    "spdm": "spdm.parse_report",
    "snp": "snp.parse_report",
    "tdx": "tdx.parse_quote",
    "ocsp": "ocsp.check_ocsp_response",
    "shard": "sealing.parse_shard_header",
    "record": "stream.RecordOpener.open",
    "entry": "log.decode_entry",
    "bundle": "stream.KeyBundle.decode",
    "logproof": "log.decode_entry_proof",
    "protobuf": "rpc.v1 FromString",
}
#: Generated mutants added to the seed corpus when no corpus directory is given.
DEFAULT_SEED_MUTANTS = 200


def _resolve(name: str) -> str:
    return ALIASES.get(name, name)


def _seed_dir(family: str) -> Path:
    from tests.adversarial import corpus

    parent = os.environ.get("LESSEE_FUZZ_WORKDIR")  # where the seed corpus goes (default /tmp)
    out = Path(tempfile.mkdtemp(prefix=f"lessee-fuzz-{family}-", dir=parent))
    for i, s in enumerate(corpus.seeds(family)):
        (out / f"seed-{i:03d}").write_bytes(s.data)
    count = int(os.environ.get("LESSEE_FUZZ_SEEDS", str(DEFAULT_SEED_MUTANTS)))
    for i, m in enumerate(corpus.generate(family, seed=0, count=count)):
        (out / f"mutant-{i:05d}").write_bytes(m.data)
    return out


def main(argv: list[str]) -> int:
    import atheris

    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    with atheris.instrument_imports(include=["attest", "sealing", "agent"]):
        from tests.adversarial import corpus
        from tests.adversarial.targets import BY_NAME, TARGETS

        if argv[1] == "--list":
            for t in TARGETS:
                if t.atheris:
                    alias = next((a for a, n in ALIASES.items() if n == t.name), "")
                    print(f"{alias:9s} {t.name}  ({t.threat})")
            return 0
        name = _resolve(argv[1])
        if name not in BY_NAME or not BY_NAME[name].atheris:
            print(f"unknown fuzz target {argv[1]!r}; try --list", file=sys.stderr)
            return 2
        target = BY_NAME[name]
        seeds = corpus.seeds(target.family)
        label = seeds[0].label
        # Run the real seeds once inside the instrumentation context: this imports (and so
        # instruments) every module the target touches, and fixes the accepted fingerprints.
        accepted: set[Any] = set()
        for s in seeds:
            try:
                result = target.call(s.data, label)
            except target.allowed:
                continue
            if target.passed(result) and target.fingerprint is not None:
                fp = target.fingerprint(result)
                accepted |= fp if isinstance(fp, frozenset) else {fp}

    def test_one_input(data: bytes) -> None:
        try:
            result = target.call(data, label)
        except target.allowed:
            return
        if target.fingerprint is None or not target.passed(result):
            return
        fp = target.fingerprint(result)
        items = fp if isinstance(fp, frozenset) else frozenset({fp})
        if not items <= accepted:
            raise AssertionError(f"{target.name} accepted a tampered input ({len(data)} bytes)")

    args = [argv[0], *argv[2:]]
    if not any(not a.startswith("-") for a in argv[2:]):
        args.append(str(_seed_dir(target.family)))
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
    return 0  # pragma: no cover - atheris.Fuzz() exits the process


if __name__ == "__main__":
    sys.exit(main(sys.argv))
