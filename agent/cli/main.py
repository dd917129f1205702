"""Entry point of the ``lessee`` command.

Each command group lives in its own module and is imported only when that group runs, so
``lessee gpu verify`` never pays for grpc or numpy imports. Every group module exposes
``register(parser)``, which adds its subcommands and sets ``func(args) -> int`` on each.

Exit codes (a contract other tools rely on): 0 every check passed; 1 evidence rejected or a
check could not be done; 2 unreadable or malformed input, or bad usage. Errors are one line on
stderr, never a traceback (set LESSEE_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import cast

from agent.text import printable
from attest.errors import InputError, LesseeError

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
#: Interrupted (Ctrl-C): 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130

#: group name -> (module, one-line help). Kept here so ``lessee --help`` imports nothing else.
GROUPS: dict[str, tuple[str, str]] = {
    "gpu": ("agent.cli.gpu", "inspect and verify NVIDIA GPU / NVSwitch attestation evidence"),
    "rim": ("agent.cli.rim", "verify an NVIDIA reference integrity manifest (RIM) on its own"),
    "cpu": ("agent.cli.cpu", "inspect and verify AMD SEV-SNP reports and Intel TDX quotes"),
    "appraise": (
        "agent.cli.appraise",
        "appraise an evidence bundle against a policy; print the EAR",
    ),
    "result": ("agent.cli.result", "verify and print signed attestation results (EAR)"),
    "seal": ("agent.cli.seal", "seal a safetensors model directory for attested enclaves only"),
    "unseal": ("agent.cli.unseal", "open sealed shards with the data key (debugging only)"),
    "sealed": ("agent.cli.sealed", "inspect sealed models (what is visible without the key)"),
    "broker": ("agent.cli.broker", "run the gRPC key broker / attestation service"),
    "agent": ("agent.cli.agent", "run the in-enclave agent"),
    "client": ("agent.cli.client", "talk to an attested enclave over encrypted streams"),
    "audit": ("agent.cli.audit", "verify and replay an attestation log offline"),
    "demo": ("agent.cli.demo", "run the end-to-end demo on emulated CC hardware"),
    "threats": ("agent.cli.threats", "render the threat model"),
}


def _available_groups() -> dict[str, tuple[str, str]]:
    """Groups whose module is present (lets the table grow ahead of the code)."""
    out = {}
    for name, (module, text) in GROUPS.items():
        if importlib.util.find_spec(module) is not None:
            out[name] = (module, text)
    return out


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    groups = _available_groups()
    parser = argparse.ArgumentParser(
        prog="lessee",
        description=(
            "Confidential inference toolkit: verify GPU and CPU TEE attestation evidence, seal "
            "model weights to attested enclaves, encrypt token streams end to end, and keep a "
            "tamper-evident log that auditors can replay offline."
        ),
        epilog="Exit codes: 0 all checks passed; 1 rejected or check not possible; 2 bad input or usage.",
    )
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True
    for name, (module, text) in groups.items():
        p = sub.add_parser(name, help=text, description=text)
        if name == selected:
            importlib.import_module(module).register(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Ctrl-C anywhere, the group's import and the parser included (a cold import of grpc or
    # torch takes long enough to be interrupted), is one line and 130, never a traceback.
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("lessee: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(selected)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: --help (0) or usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    except InputError as exc:  # an option's value, refused by its type (agent.cli._common)
        print(f"lessee: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    func = getattr(args, "func", None)
    if func is None:
        parser.parse_args([*args_list, "--help"])
        return EXIT_USAGE
    try:
        return cast(Callable[[argparse.Namespace], int], func)(args)
    # One line each, whatever the message quotes (a path with a newline, a broker's text): an
    # escaped control character cannot start a line of its own ("lessee: rejected: ...").
    except InputError as exc:
        print(f"lessee: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except LesseeError as exc:
        print(f"lessee: rejected: {printable(str(exc))}", file=sys.stderr)
        return EXIT_REJECTED
    except OSError as exc:
        text = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        print(f"lessee: error: {printable(text)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # the promise is "never a traceback"; keep one for debugging
        if os.environ.get("LESSEE_DEBUG"):
            traceback.print_exc()
        print(
            f"lessee: internal error ({type(exc).__name__}); set LESSEE_DEBUG=1 for details",
            file=sys.stderr,
        )
        return EXIT_REJECTED


if __name__ == "__main__":
    sys.exit(main())
