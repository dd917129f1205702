"""Shared ``--revocation`` options for the commands that check certificate chains (gpu, rim).

One place defines the flags and turns them into what ``attest.revocation.check_chain_revocation``
takes, so ``lessee gpu verify`` and ``lessee rim verify`` behave the same:

* ``--revocation online`` (the default without ``--ocsp``): ask the OCSP responder
  (``--ocsp-url``, default NVIDIA's) with ``--ocsp-timeout`` seconds per request, caching answers
  in ``--ocsp-cache DIR`` if given.
* ``--revocation stapled`` (the default when ``--ocsp FILE`` is given): use only the DER OCSP
  responses in the ``--ocsp`` files; certificates without one are reported as missing.
* ``--revocation skip``: check nothing; the result can be at best a warning.

``--allow-hold`` accepts ``certificate_hold`` (NVIDIA's verifier has the same flag); read it as
``args.allow_hold``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attest.errors import InputError
from attest.revocation import MAX_OCSP_RESPONSE_BYTES, OcspSource, RevocationMode, StapledOcsp

#: Mirrors agent.ocsp_fetch (not imported here so ``--help`` stays cheap).
_DEFAULT_OCSP_URL = "https://ocsp.ndis.nvidia.com/"
_DEFAULT_OCSP_TIMEOUT_S = 10.0


def add_revocation_args(parser: argparse.ArgumentParser) -> None:
    """Add --revocation, --ocsp, --allow-hold, --ocsp-url, --ocsp-timeout, --ocsp-cache."""
    group = parser.add_argument_group("revocation (OCSP)")
    group.add_argument(
        "--revocation",
        choices=[m.value for m in RevocationMode],
        default=None,
        help=(
            "where OCSP answers come from: 'online' (default; NVIDIA's responder), 'stapled'"
            " (default when --ocsp is given: only the --ocsp files) or 'skip' (no check; at best"
            " a warning)"
        ),
    )
    group.add_argument(
        "--ocsp",
        metavar="FILE",
        action="append",
        default=[],
        help="a DER OCSP response to use as collateral (repeatable)",
    )
    group.add_argument(
        "--allow-hold",
        action="store_true",
        help="accept certificates on hold (certificate_hold) as a warning instead of rejecting",
    )
    group.add_argument(
        "--ocsp-url",
        default=_DEFAULT_OCSP_URL,
        metavar="URL",
        help=f"OCSP responder for --revocation online (default {_DEFAULT_OCSP_URL})",
    )
    group.add_argument(
        "--ocsp-timeout",
        type=float,
        default=_DEFAULT_OCSP_TIMEOUT_S,
        metavar="SECONDS",
        help=f"timeout per OCSP request (default {_DEFAULT_OCSP_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--ocsp-cache",
        metavar="DIR",
        default=None,
        help="keep fetched OCSP responses in DIR until their nextUpdate (re-verified on use)",
    )


def _read_response(path: str) -> bytes:
    p = Path(path)
    with p.open("rb") as f:
        data = f.read(MAX_OCSP_RESPONSE_BYTES + 1)
    if len(data) > MAX_OCSP_RESPONSE_BYTES:
        raise InputError(f"{path}: larger than {MAX_OCSP_RESPONSE_BYTES} bytes")
    return data


def revocation_from_args(args: argparse.Namespace) -> tuple[RevocationMode, OcspSource | None]:
    """The mode and the OCSP source the flags ask for; InputError for contradictory flags."""
    files: list[str] = list(getattr(args, "ocsp", []) or [])
    chosen = getattr(args, "revocation", None)
    mode = (
        RevocationMode(chosen)
        if chosen
        else (RevocationMode.STAPLED if files else RevocationMode.ONLINE)
    )
    if mode == RevocationMode.SKIP:
        if files:
            raise InputError("--ocsp files given with --revocation skip: choose one")
        return mode, None
    if mode == RevocationMode.STAPLED:
        if not files:
            raise InputError("--revocation stapled needs at least one --ocsp FILE")
        responses = []
        for path in files:
            data = _read_response(path)
            try:
                StapledOcsp([data])  # name the file that is wrong, not "#3"
            except InputError as exc:
                raise type(exc)(f"--ocsp {path}: {exc}") from None
            responses.append(data)
        stapled = StapledOcsp(responses)
        return mode, stapled
    if files:
        raise InputError("--ocsp files are for --revocation stapled, not online")
    from agent.ocsp_fetch import OnlineOcsp

    source = OnlineOcsp(
        url=args.ocsp_url,
        timeout=args.ocsp_timeout,
        cache=args.ocsp_cache,
    )
    return mode, source
