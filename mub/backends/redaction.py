"""Find and redact a secret (an API key) in any text a server or a model sends back.

A piece of the key is any run of ``WINDOW`` (8) or more consecutive key characters. Texts are compared in a
folded form: each character escape decoded (``%73``, ``&#115;``, ``&#x73;``, ``&amp;``, ``\\u0073``,
``\\x73``), NFKC-normalised (full-width ``ｓ`` is ``s``), case-folded, and with everything but letters, digits, ``-`` and
``_`` (the characters of API keys) removed: white space, separators, other punctuation, and format characters
such as zero-width spaces. So a key
split by newlines, ``" | "``, dots, JSON array pieces (``"sk-ab", "cd..."``) or SSE chunk boundaries is still
found, piece by piece. The reversed key is looked for too. Base64 (standard and URL-safe, at any byte offset)
and hex spans are decoded and searched the same way, recursively to ``MAX_DEPTH`` levels (base64 of base64),
and the whole encoded span is redacted when it hides a piece.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import unicodedata

REDACTED = "[REDACTED]"
WINDOW = 8  # the shortest piece of a key that is redacted (and the shortest key redacted at all)
MAX_DEPTH = 3  # encodings within encodings decoded (base64 of base64 of hex, ...)

# One source token: a character escape (decoded as one character) or any single character.
_TOKEN = re.compile(
    r"&#[xX][0-9a-fA-F]{1,6};|&#[0-9]{1,7};|&[A-Za-z][A-Za-z0-9]{1,31};|%[0-9a-fA-F]{2}"
    r"|\\{1,2}u[0-9a-fA-F]{4}|\\{1,2}x[0-9a-fA-F]{2}|.",
    re.DOTALL,
)
# A run that may be base64 (either alphabet) or hex; 12 characters hold at least 8 encoded bytes.
_ENCODED = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}")
_HEX = re.compile(r"[0-9a-fA-F]+")
KEPT_PUNCTUATION = "-_"


def _token_text(token: str) -> str:
    if len(token) == 1:
        return token
    if token[0] == "&":
        return html.unescape(token)
    if token[0] == "%":
        return chr(int(token[1:], 16))
    code = int(token.lstrip("\\")[1:], 16)
    return chr(code) if code < 0x110000 else ""


def fold(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The folded form of ``text`` (see the module docstring) and, per folded character, its span in ``text``."""
    chars: list[str] = []
    spans: list[tuple[int, int]] = []
    for match in _TOKEN.finditer(text):
        decoded = _token_text(match.group())
        if decoded.isascii():  # the common case: no normalisation needed
            folded = decoded.lower()
        else:
            folded = unicodedata.normalize("NFKC", decoded).casefold()
        for char in folded:
            if char.isalnum() or char in KEPT_PUNCTUATION:
                chars.append(char)
                spans.append(match.span())
    return "".join(chars), spans


def _decodings(span: str) -> list[str]:
    """Texts that ``span`` may encode: base64 (both alphabets, each start offset) and hex (each alignment)."""
    texts = []
    core = span.rstrip("=")
    for skip in range(4):
        part = core[skip:]
        padded = part + "=" * (-len(part) % 4)
        for altchars in (None, b"-_"):
            try:
                texts.append(base64.b64decode(padded, altchars=altchars, validate=True).decode("latin-1"))
            except (binascii.Error, ValueError):
                pass
    if _HEX.fullmatch(core):
        for skip in (0, 1):
            part = core[skip:]
            texts.append(bytes.fromhex(part[: len(part) // 2 * 2]).decode("latin-1"))
    return texts


# Between two characters of a key: white space or an escaped line break (a wrapped or split key).
_KEY_GAP = r"(?:\s|\\[nrt])*"


def _spelled(text: str) -> str:
    """A pattern for ``text``, each character raw, backslash-escaped (``\\"``), ``\\uXXXX``, ``\\xXX`` or ``%XX``; gaps allowed."""
    parts = []
    for char in text:
        code = ord(char)
        # An escape may itself be escaped once more (JSON holding a JSON-escaped text: "\\\\u0073").
        forms = [r"\\?" + re.escape(char), rf"\\{{1,2}}u{code:04x}"]
        forms += [rf"\\{{1,2}}x{code:02x}", f"%{code:02x}"] if code < 256 else []
        parts.append("(?:" + "|".join(forms) + ")")
    return _KEY_GAP.join(parts)


def base64_cores(key: str) -> set[str]:
    """The base64 characters that depend on ``key`` alone, at each of the three byte offsets it can start at.

    ``base64(prefix + key + suffix)`` holds one of these whatever the prefix
    (``"Bearer "``, ``"user:"``, nothing) and suffix; standard and URL-safe alphabets.
    """
    data = key.encode("utf-8")
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii")
        first = -(-offset * 8 // 6)  # the first character with no prefix bit in it
        last = (offset + len(data)) * 8 // 6  # characters before this one hold no bit past the key
        core = encoded[first:last]
        cores |= {core, core.translate(str.maketrans("+/", "-_"))}
    return {core for core in cores if core}


def key_pattern(key: str) -> re.Pattern[str] | None:
    """A pattern matching ``key`` as it may appear in a text, or ``None`` for a key too short to redact.

    Any letter case (a body that upper-cases what it echoes), split by white
    space or line breaks, escaped character by character (JSON, ``repr``,
    URL quoting) and base64-encoded (an echoed ``Authorization`` header).
    Longest alternatives first, so no piece of a longer form is left behind.
    """
    if len(key) < WINDOW:
        return None
    forms = sorted({_spelled(key), *(_spelled(core) for core in base64_cores(key))}, key=len, reverse=True)
    return re.compile("|".join(forms), re.IGNORECASE)


class KeyRedactor:
    """Redacts every piece of one key (see the module docstring) from texts."""

    @classmethod
    def for_key(cls, key: str) -> "KeyRedactor | None":
        """The redactor of ``key``, or None when its folded form is shorter than WINDOW: redacting so short a
        string would mangle ordinary text ("e" would turn "expected" into "[REDACTED]xp[REDACTED]cted")."""
        return cls(key) if len(fold(key)[0]) >= WINDOW else None

    def __init__(self, key: str) -> None:
        folded, _ = fold(key)
        if len(folded) < WINDOW:
            raise ValueError(f"a key of fewer than {WINDOW} characters cannot be redacted safely")
        pieces = {folded[i : i + WINDOW] for i in range(len(folded) - WINDOW + 1)}
        backwards = folded[::-1]
        pieces |= {backwards[i : i + WINDOW] for i in range(len(backwards) - WINDOW + 1)}
        self._pieces = frozenset(pieces)
        # The whole key in its exact forms first: its punctuation (which folding drops) goes with it.
        self._whole = key_pattern(key)

    def _plain_spans(self, text: str) -> list[tuple[int, int]]:
        """Spans of ``text`` whose folded form holds a piece of the key, as written or reversed."""
        folded, spans = fold(text)
        covered = bytearray(len(folded))
        for start in range(len(folded) - WINDOW + 1):
            if folded[start : start + WINDOW] in self._pieces:
                covered[start : start + WINDOW] = b"\1" * WINDOW
        found = []
        for match in re.finditer(rb"\x01+", bytes(covered)):
            found.append((spans[match.start()][0], spans[match.end() - 1][1]))
        return found

    def _encoded_spans(self, text: str, depth: int) -> list[tuple[int, int]]:
        """Spans of ``text`` that are base64 or hex of a text holding a piece of the key."""
        if depth >= MAX_DEPTH:
            return []
        return [
            match.span()
            for match in _ENCODED.finditer(text)
            if any(self.spans(decoded, depth + 1) for decoded in _decodings(match.group()))
        ]

    def spans(self, text: str, depth: int = 0) -> list[tuple[int, int]]:
        """The spans of ``text`` to redact, merged and in order."""
        merged: list[tuple[int, int]] = []
        for start, end in sorted(self._plain_spans(text) + self._encoded_spans(text, depth)):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def redact(self, text: str) -> str:
        """``text`` with the whole key in its exact forms (:func:`key_pattern`), then every span still holding a
        piece of the key, replaced by ``[REDACTED]``."""
        if self._whole is not None:
            text = self._whole.sub(REDACTED, text)
        pieces, last = [], 0
        for start, end in self.spans(text):
            pieces += [text[last:start], REDACTED]
            last = end
        return "".join(pieces) + text[last:]
