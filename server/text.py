"""Patterns for text fields that mean the same wherever they are checked.

A pattern is checked by pydantic on the server (Rust's regex engine) and by whoever reads
it from the API document (ECMA-262: clients, test generators). Shorthand classes such as
``\\s`` differ between those engines (U+0085, U+FEFF, U+001C-U+001F), so the characters
are listed. PostgreSQL's ``text`` cannot hold U+0000: every string that is stored or
searched refuses it in its pattern, which makes it a documented 422, never a database error.
"""

from __future__ import annotations

from pydantic import AfterValidator

# Exactly the characters str.strip() removes (those for which str.isspace() is true).
WHITESPACE = r"\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Anything but U+0000.
NO_NUL = r"^[^\x00]*$"
# Anything but U+0000, with something besides whitespace.
NOT_BLANK = rf"^[^\x00]*[^\x00{WHITESPACE}][^\x00]*$"
# After the length and the pattern are checked on the string as sent (as the document
# says), the whitespace around it is dropped: what NOT_BLANK let through stays non-empty.
STRIP = AfterValidator(str.strip)
