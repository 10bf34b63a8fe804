"""File names as text to show: any bytes in, one honest line out."""

from __future__ import annotations

import unicodedata

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(name: str) -> str:
    """A file name as one line of text to show: bytes that are not UTF-8 as \\xNN, control and
    invisible formatting characters (a newline, an escape, a right-to-left override) as \\n,
    \\x1b, \\u202e, and a backslash doubled, so that no two names print alike.
    The exact name is what `retrieval search --paths -0` prints."""
    if name.isprintable() and "\\" not in name:
        return name
    out = []
    for char in name:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one byte that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            # \\xNN always names one byte of the name; \\u a character of several.
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code <= 0xFFFF
                       else f"\\U{code:08x}")  # fmt: skip
        else:
            out.append(char)
    return "".join(out)
