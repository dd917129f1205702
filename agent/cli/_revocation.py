"""Shared revocation (OCSP) options of the commands that check NVIDIA certificate chains.

One place defines the flags and turns them into what ``attest.revocation.check_chain_revocation``
takes, so ``lessee gpu verify`` and ``lessee rim verify`` accept the same flags and refuse the
same contradictions:

* ``--revocation online`` (the default without ``--ocsp``): ask the OCSP responder
  (``--ocsp-url``, default NVIDIA's; plain http only on loopback, for a local test responder)
  with ``--ocsp-timeout`` seconds per request, caching answers in ``--ocsp-cache DIR`` if given
  (re-verified on every use).
* ``--revocation stapled`` (the default when ``--ocsp FILE`` is given): use only the DER OCSP
  responses in the ``--ocsp`` files; certificates without one are reported as missing.
* ``--revocation skip``: check nothing; the result can be at best a warning.

``--allow-hold`` accepts ``certificate_hold`` as a warning (NVIDIA's verifier has the same flag);
read it as ``args.allow_hold``. Contradictory flags and unusable files are ``InputError`` /
``ParseError`` naming the flag or the file: usage errors (exit 2).
"""

from __future__ import annotations

import argparse
import urllib.parse

from agent.bounded_read import read_bounded
from agent.cli._common import seconds_type
from attest.errors import InputError
from attest.revocation import MAX_OCSP_RESPONSE_BYTES, OcspSource, RevocationMode, StapledOcsp

#: Mirrors agent.ocsp_fetch (not imported here so ``--help`` stays cheap).
_DEFAULT_OCSP_URL = "https://ocsp.ndis.nvidia.com/"
_DEFAULT_OCSP_TIMEOUT_S = 10.0
#: ``agent.ocsp_fetch.OnlineOcsp``'s bound on its timeout (a test keeps the two equal).
_MAX_OCSP_TIMEOUT_S = 300.0
#: Stapled OCSP files accepted per run (NVIDIA: 3 per device chain + 3 per RIM chain).
MAX_OCSP_FILES = 256
#: Hosts for which a plain-http ``--ocsp-url`` is allowed: a test responder on this machine.
#: Anywhere else the question would travel in the clear and reveal which device is asking.
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


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
        type=seconds_type("--ocsp-timeout", maximum=_MAX_OCSP_TIMEOUT_S),
        default=_DEFAULT_OCSP_TIMEOUT_S,
        metavar="SECONDS",
        help=f"timeout per OCSP request (default {_DEFAULT_OCSP_TIMEOUT_S:g}, at most "
        f"{_MAX_OCSP_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--ocsp-cache",
        metavar="DIR",
        default=None,
        help="keep fetched OCSP responses in DIR until their nextUpdate (re-verified on use)",
    )


def _read_response(path: str) -> bytes:
    return read_bounded(path, MAX_OCSP_RESPONSE_BYTES, "OCSP response")


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
        if len(files) > MAX_OCSP_FILES:
            raise InputError(f"{len(files)} --ocsp files; the limit is {MAX_OCSP_FILES}")
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

    host = urllib.parse.urlsplit(args.ocsp_url).hostname
    source = OnlineOcsp(
        url=args.ocsp_url,
        timeout=args.ocsp_timeout,
        cache=args.ocsp_cache,
        allow_http=host in _LOOPBACK,
    )
    return mode, source
