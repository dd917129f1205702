"""``lessee seal MODEL_DIR OUT_DIR --model-id ID --model-version N --key-out FILE``.

Makes a fresh data key (DEK), seals every file of the model directory under it, and writes the
key to ``--key-out`` (mode 0600, never overwritten). The key belongs in the broker's key store,
not next to the sealed files: the command refuses a key path inside OUT_DIR, and says so loudly.
(``--key-id`` with a key store comes with the broker.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from agent.cli._progress import Progress
from agent.loader.keyfile import write_key_file
from agent.loader.model import seal_model
from attest.errors import InputError
from sealing.weights import DEFAULT_CHUNK_SIZE, DEK_BYTES, key_fingerprint
from sealing.weights._format import MAX_MODEL_VERSION
from sealing.weights._keys import wipe

KEY_NOTE = (
    "NOTE: {path} holds the model's data key. Import it into the key broker's key store and "
    "then delete it; never ship it with the sealed directory or commit it anywhere."
)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def _seal(args: argparse.Namespace) -> int:
    model_dir, out_dir, key_out = Path(args.model_dir), Path(args.out_dir), Path(args.key_out)
    if _inside(key_out, out_dir) or _inside(key_out, model_dir):
        raise InputError("--key-out must not be inside MODEL_DIR or OUT_DIR (the key stays apart)")
    if key_out.exists():
        raise InputError(f"{key_out}: exists (refusing to overwrite a key)")
    if not 0 <= args.model_version <= MAX_MODEL_VERSION:
        # key release carries the version as a u32: a larger one could be sealed, never released
        raise InputError(f"--model-version must be in 0..{MAX_MODEL_VERSION}")
    dek = bytearray(os.urandom(DEK_BYTES))
    try:
        progress = Progress("sealing", quiet=args.quiet)
        result = seal_model(
            model_dir,
            out_dir,
            dek,
            model_id=args.model_id,
            model_version=args.model_version,
            rng=os.urandom,
            chunk_size=args.chunk_size,
            threads=args.threads,
            progress=progress.advance,
            on_total=progress.set_total,
        )
        progress.close()
        key_id = key_fingerprint(dek)
        write_key_file(
            key_out,
            dek,
            key_id=key_id,
            model_id=args.model_id,
            model_version=args.model_version,
            manifest_digest=result.manifest_digest,
        )
    finally:
        wipe(dek)
    for name in result.skipped:
        print(f"lessee: skipped {name} (not a regular top-level file)", file=sys.stderr)
    summary = {
        "model_id": args.model_id,
        "model_version": args.model_version,
        "key_id": key_id,
        "manifest_digest": result.manifest_digest,
        "files": [e.name for e in result.manifest.entries],
        "out_dir": str(out_dir),
        "key_file": str(key_out),
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"sealed {len(summary['files'])} file(s) of {args.model_id} v{args.model_version}")
        print(f"manifest digest: {result.manifest_digest}  (pin it in the key-release policy)")
        print(f"key id: {key_id}")
    print(KEY_NOTE.format(path=key_out), file=sys.stderr)
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="safetensors model directory")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new or empty output directory")
    parser.add_argument("--model-id", required=True, help="the model's id, e.g. acme/llama-70b")
    parser.add_argument("--model-version", required=True, type=int, help="integer version")
    parser.add_argument(
        "--key-out", required=True, help="where to write the new data key (mode 0600)"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="bytes per chunk (power of 2)"
    )
    parser.add_argument("--threads", type=int, default=None, help="worker threads")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--json", action="store_true", help="machine-readable summary")
    parser.set_defaults(func=_seal)
