"""Time is an argument in ``attest``; these helpers keep it unambiguous."""

from __future__ import annotations

from datetime import UTC, datetime

from attest.errors import InputError


def require_aware(at: datetime, *, name: str = "at") -> datetime:
    """Return ``at`` in UTC, refusing naive datetimes (their meaning depends on the host)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise InputError(f"{name} must be timezone-aware (got a naive datetime)")
    return at.astimezone(UTC)


def parse_iso8601(text: str) -> datetime:
    """Parse an ISO-8601 time as given on a command line; a bare date means midnight UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        # In range locally but not in UTC (9999-12-31T23:59-01:00): OverflowError, not an
        # internal error.
        return value.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InputError(f"not an ISO-8601 time: {text!r}") from exc
