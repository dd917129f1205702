"""Text from elsewhere, made safe to print."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` from the broker (or the relay before it) with every character that is not
    printable escaped, as ``repr`` escapes it: a finding, a status detail or a reason code is
    unauthenticated, and a newline or an ANSI escape in one could forge lines of the agent's
    own output ("key released ... loaded") on the operator's console or in its logs."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


__all__ = ["printable"]
