# ruff: noqa: N999  (the file is named after the threat id, as tests/regressions requires)
"""T-EVIDENCE-04 (fixed): a TDX quote whose PCK chain's last newline is replaced by a NUL is
still accepted (low severity: encoding malleability).

Found by tests/adversarial/test_mutation_suite.py (``tdx.verify_quote_signatures``, seed 3,
1500 mutants per target): seed ``spr_e4_v4`` (the real go-tdx-guest SPR E4 quote, cut at the
end of its certification data, as the corpus does), op ``fill[4934:4935]=00``: the ``\\n``
after the last ``-----END CERTIFICATE-----`` set to 0x00. The parser strips one trailing NUL
(Intel's QE writes the chain as a C string) and its PEM pattern let the last newline be absent,
so both byte strings gave the same certificates and the quote verified: two encodings of one
quote, whose exact bytes the log archives (0x0D, a lone CR, was accepted as well). Fixed by a PEM pattern that takes the blocks
exactly as real quotes have them: LF line ends, each END line ended.
"""

from __future__ import annotations

import pytest

from attest.tdx.quote import TdxQuoteParseError, parse_quote
from tests.adversarial.corpus import CPU

QUOTE = (CPU / "tdx" / "go-tdx-guest" / "tdx_prod_quote_SPR_E4.dat").read_bytes()[:4935]
OFFSET = 4934


def _with(byte: int) -> bytes:
    return QUOTE[:OFFSET] + bytes([byte]) + QUOTE[OFFSET + 1 :]


def test_the_real_quote_parses_and_ends_its_chain_with_a_newline() -> None:
    assert QUOTE[OFFSET - 25 : OFFSET + 1] == b"-----END CERTIFICATE-----\n"
    parse_quote(QUOTE)


@pytest.mark.parametrize("byte", [0x00, 0x0D, 0x20])
def test_another_chain_terminator_is_refused(byte: int) -> None:
    with pytest.raises(TdxQuoteParseError, match="sequence of PEM certificate blocks"):
        parse_quote(_with(byte))


def test_crlf_line_ends_are_refused() -> None:
    """Not a one-byte change, but the same malleability: the PEM parser reads CRLF alike.
    (Checked on the chain alone: CRLF changes its length, which the quote's size fields fix.)"""
    from attest.tdx.quote import _check_pem_chain

    chain = QUOTE[QUOTE.index(b"-----BEGIN CERTIFICATE-----") :]
    _check_pem_chain(chain, 0)
    _check_pem_chain(chain + b"\x00", 0)  # the C-string end real quotes carry
    with pytest.raises(TdxQuoteParseError, match="sequence of PEM certificate blocks"):
        _check_pem_chain(chain.replace(b"\n", b"\r\n"), 0)
