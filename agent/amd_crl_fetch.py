"""Fetch AMD's SEV-SNP CRLs from AMD's Key Distribution Service into a broker's ``--amd-crls``
directory (``lessee broker fetch-amd-crls``), then let the broker reload them (SIGHUP).

Why a fetcher: a CRL the broker holds is checked *instead of* the one in the evidence, and a
held list past its nextUpdate refuses every report of its kind and product. The lists must be
refreshed while the broker serves, and a refresh must never make things worse:

* every answer is checked before it is written: bounded, DER or PEM, non-DER signature
  encodings refused, issued by ``ARK-<product>`` and signed by that product's *pinned* ARK
  (or an emulation ARK the caller names), and current now. An answer that fails any check is
  not written, so the file the broker holds stays as it was;
* a list is never replaced by an older one (its thisUpdate), the rule the broker's reload also
  applies, so a stale or replayed answer cannot roll a revocation back;
* each file is replaced atomically (a temporary file in the same directory, fsync, rename), so
  a broker reloading at the same moment reads the old list or the new one, never half of one.

KDS addresses: ``<base>/<kind>/v1/<product>/crl`` (``https://kdsintf.amd.com/vcek/v1/Milan/crl``).
A 404 means AMD publishes no such list (for example no VLEK list for a product): reported as
``absent`` and not an error.
"""

from __future__ import annotations

import http.client
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from agent.fetching import MAX_REASON_CHARS, http_fetch, require_https, write_atomically
from attest.errors import InputError, LesseeError, RevocationError, VerificationError
from attest.snp.report import Product, SigningKey
from attest.snp.verify import (
    MAX_CRL_BYTES,
    held_crl_dates,
    held_crl_name,
    load_held_crl,
    pinned_ark,
    verify_amd_crl_signature,
)

#: AMD's Key Distribution Service.
AMD_KDS_URL = "https://kdsintf.amd.com"
#: Seconds one list's request may take in all (connect, headers, body).
DEFAULT_TIMEOUT_S = 10.0
#: The key kinds whose intermediates AMD revokes by CRL (VCEK: ASKs; VLEK: ASVKs).
KINDS = (SigningKey.VCEK, SigningKey.VLEK)


class AmdCrlFetchError(VerificationError):
    """KDS could not be asked, or its answer is not a list the broker may hold."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="crl_unavailable")


@dataclass(frozen=True)
class FetchOutcome:
    """What happened to one list: ``written`` (the file now holds the new list), ``unchanged``
    (it already held these bytes), ``kept`` (it holds a newer list than KDS served), ``absent``
    (KDS has no such list) or ``failed`` (``error`` says why; the file was not touched)."""

    name: str
    status: str
    this_update: datetime | None = None
    next_update: datetime | None = None
    error: str | None = None


def kds_crl_url(base_url: str, kind: SigningKey, product: Product) -> str:
    return f"{base_url.rstrip('/')}/{kind.value}/v1/{product.value}/crl"


def fetch_amd_crl(
    kind: SigningKey,
    product: Product,
    *,
    base_url: str = AMD_KDS_URL,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> bytes | None:
    """The bytes KDS serves for this list (unchecked), or None when it has none (404)."""
    require_https(base_url, "KDS")
    url = kds_crl_url(base_url, kind, product)
    request = urllib.request.Request(url, headers={"Accept": "application/pkix-crl"})  # noqa: S310
    name = held_crl_name(kind, product)
    answer = http_fetch(
        request,
        timeout=timeout,
        limit=MAX_CRL_BYTES,
        unreachable=lambda why: AmdCrlFetchError(f"{name}: KDS unreachable: {why}"),
    )
    if answer.status == 404:
        return None
    if not answer.ok:
        raise AmdCrlFetchError(f"{name}: KDS answered HTTP {answer.status}")
    if len(answer.body) > MAX_CRL_BYTES:
        raise AmdCrlFetchError(f"{name}: KDS answer exceeds {MAX_CRL_BYTES} bytes")
    return answer.body


def check_fetched_crl(
    data: bytes,
    kind: SigningKey,
    product: Product,
    *,
    at: datetime,
    extra_arks: Sequence[x509.Certificate] = (),
) -> tuple[datetime, datetime]:
    """(thisUpdate, nextUpdate) of a list fit to hold for ``kind`` and ``product`` at ``at``:
    what ``load_held_crl`` checks, plus the signature of the product's pinned ARK (or of one of
    ``extra_arks`` with the issuer's name: emulation) and a window that contains ``at``.
    ``AmdCrlFetchError`` otherwise."""
    name = held_crl_name(kind, product)
    try:
        load_held_crl(data, kind, product)
    except InputError as exc:
        raise AmdCrlFetchError(str(exc)) from None
    crl: x509.CertificateRevocationList | None = None
    for ark in (pinned_ark(product), *extra_arks):
        try:
            crl = verify_amd_crl_signature(data, ark)
            break
        except RevocationError as exc:
            if exc.reason != "crl_issuer":  # this ARK's name, but not its signature
                raise AmdCrlFetchError(f"{name}: {exc}") from None
    if crl is None:
        raise AmdCrlFetchError(f"{name}: not issued by the pinned ARK-{product.value}")
    this_update, next_update = crl.last_update_utc, crl.next_update_utc
    if next_update is None or not this_update <= at <= next_update:
        raise AmdCrlFetchError(
            f"{name}: not current at {at.isoformat()} (thisUpdate {this_update.isoformat()}, "
            f"nextUpdate {next_update.isoformat() if next_update else 'absent'})"
        )
    return this_update, next_update


def update_crl_directory(
    directory: Path,
    *,
    at: datetime,
    products: Iterable[Product] = tuple(Product),
    kinds: Iterable[SigningKey] = KINDS,
    base_url: str = AMD_KDS_URL,
    timeout: float = DEFAULT_TIMEOUT_S,
    extra_arks: Sequence[x509.Certificate] = (),
) -> list[FetchOutcome]:
    """Fetch, check and write ``<kind>-<product>.crl`` into ``directory`` for every pair; one
    outcome per pair, in order. A failure of one list leaves its file untouched and does not
    stop the others. The KDS URL is checked first (``InputError``: a usage error, before any
    list is asked for)."""
    require_https(base_url, "KDS")
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory")
    out: list[FetchOutcome] = []
    for product in products:
        for kind in kinds:
            name = held_crl_name(kind, product)
            try:
                data = fetch_amd_crl(kind, product, base_url=base_url, timeout=timeout)
                if data is None:
                    out.append(FetchOutcome(name, "absent"))
                    continue
                this_update, next_update = check_fetched_crl(
                    data, kind, product, at=at, extra_arks=extra_arks
                )
                out.append(_store(directory / f"{name}.crl", data, name, this_update, next_update))
            except (LesseeError, OSError, http.client.HTTPException, ValueError) as exc:
                # One list's failure, whatever its kind, is that list's outcome: the lists
                # already written must still be reported (and the broker told to reload them).
                error = str(exc) if isinstance(exc, LesseeError) else _untyped(name, exc)
                out.append(FetchOutcome(name, "failed", error=error))
    return out


def _untyped(name: str, exc: BaseException) -> str:
    """A failure that was not one of ours, in a few words (its text may quote a server)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(exc)[:MAX_REASON_CHARS])
    return f"{name}: {type(exc).__name__}: {text}"


def _store(
    path: Path, data: bytes, name: str, this_update: datetime, next_update: datetime
) -> FetchOutcome:
    """Write ``data`` unless the file already holds it or a newer list (never a rollback)."""
    held: bytes | None = None
    if path.is_file():
        with path.open("rb") as f:
            held = f.read(MAX_CRL_BYTES + 1)  # larger is not a list: replaced below
    if held == data:
        return FetchOutcome(name, "unchanged", this_update, next_update)
    if held is not None:
        try:
            held_this, held_next = held_crl_dates(held)
        except InputError:
            held_this = None  # a damaged file is replaced by a checked list
        if held_this is not None and held_this > this_update:
            return FetchOutcome(name, "kept", held_this, held_next)
    # CRLs are public; 0644 so a broker running as another user can read a list root fetched
    # (a file being replaced keeps the mode and owner the operator gave it)
    write_atomically(path, data, mode=0o644)
    return FetchOutcome(name, "written", this_update, next_update)
