"""The one rule for text that comes from outside: an HTTP body, a Python API argument, a command-line argument,
a line of a file. Every path that takes text in goes through `checked_text`; the model's tokenizer, the JSON
writers and the line files downstream can then never meet something that is not text.

Text is Unicode that UTF-8 can carry. Bytes are decoded as strict UTF-8: `json.loads(bytes)` decodes with
"surrogatepass", which lets a UTF-8-encoded surrogate (ED A0 80) through. A str must hold no lone UTF-16 surrogate:
JSON and Python can spell one (`\\ud800`), and Python keeps each undecodable byte of a command-line argument as
one (U+DC80-U+DCFF, "surrogateescape"). What is not text is refused with where and what it is (a 400 from the
server, an `error:` line from the command line, a TextJepaError from Python); readers of many lines skip such a
line and count it instead.
"""

from __future__ import annotations

from textjepa.errors import TextJepaError

# Python's "surrogateescape" keeps an undecodable byte B as the lone surrogate U+DC00 + B (B >= 0x80).
ESCAPED_BYTES = range(0xDC80, 0xDD00)


class NotText(TextJepaError):
    """Input that is not text (invalid UTF-8 or a lone surrogate); the message says where and what."""


def checked_text(value: str | bytes, where: str = "the text") -> str:
    """`value` as a str that UTF-8 can carry, or NotText naming `where`, the position and the problem."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            found = bytes(value[exc.start : exc.start + 3]).hex(" ")
            raise NotText(f"{where} is not valid UTF-8 (bytes {found} at byte {exc.start}), so not text") from None
    if not isinstance(value, str):
        raise NotText(f"{where} is not a string but {type(value).__name__}")
    if value.isascii():  # the common case, checked at C speed
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        what = (
            f"the invalid UTF-8 byte 0x{code - 0xDC00:02x}"
            if code in ESCAPED_BYTES
            else f"a lone UTF-16 surrogate (U+{code:04X})"
        )
        raise NotText(f"{where} holds {what} at character {exc.start}, which is not text") from None
    return value
