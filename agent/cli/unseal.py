"""``lessee unseal SEALED_DIR --key FILE --out DIR``: plaintext on disk, for debugging only.

Production never does this: the loading hook decrypts into memory inside the enclave. The
model id, version and manifest digest default to what the key file records; ``--model-id`` and
``--model-version`` replace the key file's, and ``--manifest-digest``, if given, must equal the
key file's digest (a different one is refused as bad usage). So the command opens only the
sealing the key file was written for: another sealing of the same model and version under the
same key (a re-seal, or a host swapping directories) is refused before anything is decrypted.

``--out`` must be new or an empty directory. Files are written under temporary names and take
their real names only after every file authenticated; if anything fails, every file written so
far is removed and the command says so. Plaintext on disk is the point of this tool, so a
process killed mid-way (SIGKILL, power loss) can still leave ``.NAME.partial`` files or, during
the final renames, some of the plaintext files: delete ``--out`` after a crash.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli._progress import Progress
from agent.loader.keyfile import KeyFile, read_key_file
from agent.loader.model import SealedModel, check_out_dir, read_manifest_bytes
from attest.errors import InputError
from sealing.weights import key_fingerprint, parse_manifest
from sealing.weights._keys import wipe

WARNING = (
    "WARNING: lessee unseal writes PLAINTEXT weights to {out}. Debugging only; delete them "
    "when done. Production loads sealed weights in memory inside the attested enclave."
)


def _manifest_digest(args: argparse.Namespace, key: KeyFile) -> str:
    """The digest to pin: the key file's, which ``--manifest-digest`` may only repeat.

    The key file was written for one sealing; letting the flag pick another would open a
    different manifest under the same key, which is what pinning is there to refuse.
    """
    if args.manifest_digest is not None and args.manifest_digest != key.manifest_digest:
        raise InputError(
            "--manifest-digest differs from the digest the key file records "
            f"({key.manifest_digest}); this key file was written for another sealing"
        )
    return key.manifest_digest


def _unseal(args: argparse.Namespace) -> int:
    sealed_dir, out = Path(args.sealed_dir), Path(args.out)
    check_out_dir(out)  # bad usage, reported before the key is read
    print(WARNING.format(out=out), file=sys.stderr)
    key = read_key_file(args.key)
    try:
        digest = _manifest_digest(args, key)
        claimed = parse_manifest(read_manifest_bytes(sealed_dir))
        if claimed.key_id != key_fingerprint(key.dek) and not args.quiet:
            print(
                f"lessee: note: manifest names key {claimed.key_id}, this key is "
                f"{key_fingerprint(key.dek)}",
                file=sys.stderr,
            )
        model_id = args.model_id or key.model_id
        version = args.model_version if args.model_version is not None else key.model_version
        with SealedModel(
            sealed_dir,
            key.dek,
            model_id=model_id,
            model_version=version,
            manifest_digest=digest,
            threads=args.threads,
        ) as model:
            progress = Progress("unsealing", model.total_plaintext, quiet=args.quiet)
            try:
                written = model.unseal_to(out, progress=progress.advance)
            except BaseException:
                progress.close()
                _report_cleanup(out)
                raise
            progress.close()
    finally:
        wipe(key.dek)
    for p in written:
        print(p)
    return 0


def _report_cleanup(out: Path) -> None:
    """After a failed ``unseal_to``, which removes what it wrote: say whether ``out`` is clean,
    or name what is still there (a file that could not be removed may hold plaintext)."""
    try:
        left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError:
        left = ["(could not list the directory)"]
    if left:
        print(
            f"lessee: WARNING: unseal failed and {out} still holds {', '.join(left)}; delete "
            "anything unsealed",
            file=sys.stderr,
        )
    else:
        print(f"lessee: unseal failed; no plaintext was left in {out}", file=sys.stderr)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sealed_dir", metavar="SEALED_DIR")
    parser.add_argument("--key", required=True, help="key file written by lessee seal")
    parser.add_argument(
        "--out",
        required=True,
        help="new or empty directory for the plaintext files (removed again if unsealing fails)",
    )
    parser.add_argument(
        "--model-id", default=None, help="expected model id (default: the key file's)"
    )
    parser.add_argument(
        "--model-version", type=int, default=None, help="expected version (default: the key file's)"
    )
    parser.add_argument(
        "--manifest-digest",
        default=None,
        help="sha256:... digest to pin; the key file's digest is always pinned, and this must "
        "equal it",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.set_defaults(func=_unseal)
