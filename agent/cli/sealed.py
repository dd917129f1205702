"""``lessee sealed inspect SEALED_DIR``: what a sealed model shows without its key.

Visible: model id and version, key id, file names, kinds and sizes, chunk size, the manifest
digest. Not visible: tensor names, shapes, dtypes, metadata (the safetensors header is inside
the encryption), and anything of the weights. None of what is shown is authenticated until the
model is opened with the key; structural mismatches between files and manifest are reported
(exit 1).
"""

from __future__ import annotations

import argparse
import json

from agent.loader.model import inspect_sealed_dir


def _inspect(args: argparse.Namespace) -> int:
    ins = inspect_sealed_dir(args.sealed_dir)
    m = ins.manifest
    doc = {
        "authenticated": False,
        "model_id": m.model_id,
        "model_version": m.model_version,
        "key_id": m.key_id,
        "manifest_digest": m.digest,
        "files": [
            {
                "name": f.entry.name,
                "kind": f.entry.kind.name.lower(),
                "plaintext_bytes": f.entry.plaintext_length,
                "sealed_bytes": f.entry.sealed_length,
                "chunk_size": 1 << f.entry.chunk_log2,
                "header_digest": f.entry.header_digest.hex(),
            }
            for f in ins.files
        ],
        "problems": ins.problems,
    }
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(f"model:    {m.model_id} version {m.model_version}   (claimed; not authenticated)")
        print(f"key id:   {m.key_id}")
        print(f"manifest: {m.digest}")
        for f in doc["files"]:  # type: ignore[attr-defined]
            print(
                f"  {f['name']}  {f['kind']}  {f['plaintext_bytes']} bytes "
                f"(sealed {f['sealed_bytes']}, chunks {f['chunk_size']})"
            )
        for p in ins.problems:
            print(f"PROBLEM: {p}")
    return 1 if ins.problems else 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    ins = sub.add_parser("inspect", help="show what is visible without the key")
    ins.add_argument("sealed_dir", metavar="SEALED_DIR")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=_inspect)
