"""Run the benchmarks and print one JSON line per result (also saved to bench/results/)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(
        m.name[len("bench_") :]
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )
    wanted = argv or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(names)}",
            file=sys.stderr,
        )
        return 2
    results: list[dict[str, object]] = []
    for name in wanted:
        print(f"== bench {name}", file=sys.stderr, flush=True)
        for raw in importlib.import_module(f"bench.bench_{name}").run():
            r = {"bench": name, **raw}
            print(json.dumps(r), flush=True)
            results.append(r)
    out = here / "results"
    out.mkdir(exist_ok=True)
    (out / f"{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(results, indent=1))
    failed = [r for r in results if r.get("meets_target") is False]
    for r in failed:
        print(
            f"target missed: {r['bench']}/{r['name']} ratio {r['ratio']} > {r['target_ratio']}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
