"""LSP positions <-> Python string indices, for the three negotiated encodings.

An LSP ``character`` counts code units of the negotiated encoding (UTF-16 by default;
UTF-8 or UTF-32 when the client offers them), while Python indexes strings by code
point. Conversions run in C (encode, slice, decode) rather than a Python loop, so a
10 MB single-line document costs milliseconds, not seconds. A column that lands inside
a character (half a surrogate pair, the middle of a UTF-8 sequence) rounds down to the
character's start; a column past the end of the line clamps to the line's end, as the
LSP specification asks. Lone surrogates (binary content sent as JSON) are carried
through with ``surrogatepass`` instead of raising.
"""

from __future__ import annotations

from typing import Literal

Encoding = Literal["utf-8", "utf-16", "utf-32"]
ENCODINGS: tuple[Encoding, ...] = ("utf-16", "utf-8", "utf-32")

_CODECS = {"utf-8": ("utf-8", 1), "utf-16": ("utf-16-le", 2), "utf-32": ("utf-32-le", 4)}


def units_to_index(line: str, column: int, encoding: Encoding) -> int:
    """The string index in ``line`` (without its terminator) at LSP ``column``."""
    if column <= 0:
        return 0
    if encoding == "utf-32" or line.isascii():
        return min(column, len(line))
    codec, width = _CODECS[encoding]
    head = line.encode(codec, "surrogatepass")[: column * width]
    if encoding == "utf-8":
        return len(_drop_partial_utf8(head).decode(codec, "surrogatepass"))
    text = head.decode(codec, "surrogatepass")
    n = len(text)
    # A cut between the halves of a surrogate pair decodes as a lone high surrogate where
    # the line holds one astral character: round down to that character's start.
    if n and text[-1] != line[n - 1]:
        n -= 1
    return n


def _drop_partial_utf8(data: bytes) -> bytes:
    """``data`` without a trailing incomplete UTF-8 sequence (a column cutting a character)."""
    i = len(data)
    while i > 0 and i > len(data) - 4 and data[i - 1] & 0xC0 == 0x80:
        i -= 1  # step back over continuation bytes to the lead byte
    if i == 0:
        return data
    lead = data[i - 1]
    need = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4
    return data if len(data) - (i - 1) >= need else data[: i - 1]


def negotiate(offered: list[str] | None) -> Encoding:
    """The client's most preferred encoding we support; UTF-16 when it offers none."""
    for name in offered or ():
        if name in ENCODINGS:
            return name  # type: ignore[return-value]
    return "utf-16"
