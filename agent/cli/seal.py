"""``lessee seal MODEL_DIR OUT_DIR --model-id ID --model-version N --key-out FILE``.

Makes a fresh data key (DEK), seals every file of the model directory under it, and writes the
key to ``--key-out`` (mode 0600, never overwritten). The key file is reserved (created empty,
0600, never through a symlink) before anything is sealed, so a ``--key-out`` that cannot be
written is refused (exit 2) before the only copy of a fresh key exists; if anything fails, what
this run made (the reserved key file, OUT_DIR if this run created it) is removed again. The key belongs in the broker's key store,
not next to the sealed files: the command refuses a key path inside OUT_DIR, and says so loudly.
(``--key-id`` with a key store comes with the broker.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from agent.cli._progress import Progress
from agent.loader.keyfile import write_key_file
from agent.loader.model import SealResult, seal_model
from attest.errors import InputError
from sealing.errors import SealedFormatError
from sealing.weights import DEFAULT_CHUNK_SIZE, DEK_BYTES, key_fingerprint
from sealing.weights._format import MAX_MODEL_VERSION, validate_model_id
from sealing.weights._keys import wipe
from sealing.weights.recipes import chunk_log2_of

#: Most worker threads ``--threads`` takes (sealing is I/O- and AES-bound; more buys nothing).
MAX_THREADS = 256

KEY_NOTE = (
    "NOTE: {path} holds the model's data key. Import it into the key broker's key store and "
    "then delete it; never ship it with the sealed directory or commit it anywhere."
)


def _threads(text: str) -> int:
    """``type=`` for ``--threads``: 1..MAX_THREADS (0 or a negative count is no pool at all)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_THREADS:
        raise InputError(f"--threads must be 1..{MAX_THREADS}, not {text!r}")
    return value


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before 3.13)
        raise InputError(f"{path}: cannot resolve the path ({exc})") from None


def _inside(child: Path, parent: Path) -> bool:
    try:
        _resolve(child).relative_to(_resolve(parent))
    except ValueError:
        return False
    return True


def _reserve_key_file(key_out: Path) -> None:
    """Create ``key_out`` empty (0600, O_EXCL, never through a symlink) so that the key can
    be written there after sealing; ``InputError`` if it cannot be."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(key_out, flags, 0o600)
    except FileExistsError:
        raise InputError(f"{key_out}: exists (refusing to overwrite a key)") from None
    except OSError as exc:
        raise InputError(f"--key-out {key_out}: cannot create it ({exc.strerror})") from None
    os.close(fd)


def _write_key(key_out: Path, dek: bytearray, **fields: object) -> None:
    """Write the key file over the file ``_reserve_key_file`` made: written whole under a new
    temporary name beside it (``write_key_file``: 0600, O_EXCL), then renamed over it (a
    rename replaces the name itself and follows no symlink)."""
    tmp = key_out.with_name(f".{key_out.name}.{os.urandom(6).hex()}.partial")
    try:
        write_key_file(tmp, dek, **fields)  # type: ignore[arg-type]
        os.replace(tmp, key_out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_args(args: argparse.Namespace) -> None:
    """What ``seal_model`` would refuse only after creating OUT_DIR, refused first."""
    if not 0 <= args.model_version <= MAX_MODEL_VERSION:
        # key release carries the version as a u32: a larger one could be sealed, never released
        raise InputError(f"--model-version must be in 0..{MAX_MODEL_VERSION}")
    try:
        validate_model_id(args.model_id)
        chunk_log2_of(args.chunk_size)
    except SealedFormatError as exc:
        raise InputError(str(exc)) from None


def _seal(args: argparse.Namespace) -> int:
    model_dir, out_dir, key_out = Path(args.model_dir), Path(args.out_dir), Path(args.key_out)
    if _inside(key_out, out_dir) or _inside(key_out, model_dir):
        raise InputError("--key-out must not be inside MODEL_DIR or OUT_DIR (the key stays apart)")
    _check_args(args)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: not a directory")
    made_out = not os.path.lexists(out_dir)
    _reserve_key_file(key_out)
    try:
        result, key_id = _seal_reserved(args, model_dir, out_dir, key_out)
    except BaseException:
        # nothing of this run stays behind: a sealed directory without its key opens nowhere
        key_out.unlink(missing_ok=True)
        if made_out and out_dir.is_dir() and not out_dir.is_symlink():
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return _report(args, result, key_id, out_dir, key_out)


def _seal_reserved(
    args: argparse.Namespace, model_dir: Path, out_dir: Path, key_out: Path
) -> tuple[SealResult, str]:
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
        _write_key(
            key_out,
            dek,
            key_id=key_id,
            model_id=args.model_id,
            model_version=args.model_version,
            manifest_digest=result.manifest_digest,
        )
    finally:
        wipe(dek)
    return result, key_id


def _report(
    args: argparse.Namespace, result: SealResult, key_id: str, out_dir: Path, key_out: Path
) -> int:
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
    parser.add_argument(
        "--threads", type=_threads, default=None, help=f"worker threads (1..{MAX_THREADS})"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--json", action="store_true", help="machine-readable summary")
    parser.set_defaults(func=_seal)
