"""One strict JSON reader for every JSON input lessee accepts from outside.

``json.loads`` alone lets three kinds of hostile input escape as untyped errors: deep nesting
(``RecursionError``), integers beyond Python's digit limit (``ValueError``) and invalid UTF-8.
Duplicate object keys are also refused: two parsers reading the same document differently is a
classic way to smuggle a value past a check.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from attest.errors import InputError

#: Deeper than any document we accept; bounds the parser's recursion well below Python's limit.
MAX_JSON_DEPTH = 64


def object_without_duplicates(pairs: list[tuple[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """A JSON object's pairs as a dict, and its first duplicate key (None if there is none).

    For ``object_pairs_hook``s: ``dict()`` keeps the last of equal keys, so fewer entries than
    pairs means a duplicate. Built in C; only a document that has one pays for finding it."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                return out, key
            seen.add(key)
    return out, None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out, duplicate = object_without_duplicates(pairs)
    if duplicate is not None:
        raise InputError(f"duplicate key {duplicate!r}")
    return out


#: Everything but brackets: outside the strings, all that nesting depth depends on.
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
#: Each bracket's step in depth.
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """Deepest nesting of arrays/objects in ``text``, so hostile nesting is refused before the
    recursive parser sees it.

    Exact for valid JSON, in C throughout (a Python step per character, or a regular expression
    tried at every position, was the cost: evidence bundles are mostly long base64 strings,
    attestation results many short ones): escape pairs are removed (``\\\\`` first, so that
    an escaped backslash never escapes the quote after it), which leaves a quote only where a
    string starts or ends; the text between every other quote is outside the strings, and the
    brackets there are the structure. For text that is not JSON the figure may be off, which is
    harmless: the parser refuses such text, and a ``RecursionError`` on the way is caught too.
    """
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    outside = "".join(unescaped.split('"')[::2])
    brackets = _NOT_BRACKET.sub("", outside)
    return max(0, max(accumulate(map(_STEP.__getitem__, brackets)), default=0))


def load_json(data: bytes | str, *, what: str) -> Any:
    """Parse ``data`` or raise ``InputError`` naming ``what``; never any other exception.

    Bytes must be UTF-8 (RFC 8259 section 8.1) without a byte order mark, decoded once, and the
    depth check and the parser read that same text. ``json.loads(bytes)`` would instead guess
    UTF-16/UTF-32 and skip a BOM, so a document the depth scan read one way (a lenient UTF-8
    decode) was parsed another: UTF-16 nesting got past ``MAX_JSON_DEPTH``, and one document
    had several byte spellings.
    """
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{what} is not UTF-8 (invalid byte at offset {exc.start}); JSON must be UTF-8"
            ) from None
    if text.startswith("\ufeff"):
        raise InputError(f"{what} starts with a byte order mark; JSON must not (RFC 8259 8.1)")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise InputError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, digit limit
        raise InputError(f"{what} is malformed (not valid JSON): {exc}") from None
