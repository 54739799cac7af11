"""Masks a project's secrets in anything the engine stores or shows (DESIGN §9.2).

Every form a value can take on its way through an HTTP call and back is masked as `***`:
- raw, and any mix of per-character encodings: URL percent-encoding (either hex case, `+`
  for a space, double-encoded `%25XX`) and JSON string escapes (`\\"`, `\\\\`, `\\uXXXX` with
  ensure_ascii or not, nested escaping up to a few levels);
- base64, standard and URL-safe, padded or not, at all three byte alignments: the secret's
  bytes encode to the same characters wherever they sit in a longer payload, so
  `base64("user:" + secret)` in a Basic header is found too, and the whole base64 word around
  it is masked (its edge characters hold bits of the secret);
- hex, either case.

Cuts: a cut can leave part of a secret, which no whole-value match finds. Two rules together
make that impossible to exploit: (1) code that cuts calls `truncate()`, which redacts the whole
text BEFORE cutting, so a cut can only go through `***`; (2) `redact()` itself, which the driver
runs on everything it stores after every cut, also masks a string's head or tail when it is a
fragment of at least EDGE_MIN characters of any form of a secret (a string ending with the
secret's first characters, or starting with its last ones; a trailing `…` is ignored). A cut
made by code that forgets rule (1) therefore still shows at most EDGE_MIN - 1 characters.

Values shorter than MIN_SECRET_LENGTH cannot be stored any more (422): they would rewrite
unrelated text. Older short values are still masked, raw only.
"""

from __future__ import annotations

import base64
import json
import re
from functools import lru_cache
from typing import Any
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MIN_SECRET_LENGTH = 8
EDGE_MIN = 4
EDGE_MIN_ENCODED = 8  # hex/base64 fragments are common by chance (ids, hashes): need more to count
MASK = "***"
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_")
_SHORT_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}
_ELLIPSES = ("…", "...")
_NEVER = re.compile(r"(?!)")


def _hex_ci(value: int, width: int) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in f"{value:0{width}X}")


def _char_pattern(ch: str) -> str:
    """Every spelling of one character: raw, %XX (per UTF-8 byte), JSON escapes, '+' for ' '."""
    alts = [re.escape(ch)]
    alts.append("".join("%(?:25)?" + _hex_ci(b, 2) for b in ch.encode("utf-8")))
    if ch == " ":
        alts.append(r"\+")
    if ch in _SHORT_ESCAPES:
        alts.append(r"\\{1,16}" + re.escape(_SHORT_ESCAPES[ch]))
    code = ord(ch)
    if code > 0xFFFF:  # JSON writes astral characters as a surrogate pair
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        alts.append(r"\\{1,16}u" + _hex_ci(high, 4) + r"\\{1,16}u" + _hex_ci(low, 4))
    else:
        alts.append(r"\\{1,16}u" + _hex_ci(code, 4))
    return "(?:" + "|".join(alts) + ")"


def _b64_cores(raw: bytes) -> list[str]:
    """The base64 characters that depend only on `raw`, for each of the 3 byte alignments."""
    cores = []
    n = len(raw)
    for align in range(3):
        encoded = base64.b64encode(b"\0" * align + raw + b"\0\0").decode()
        start = -(-8 * align // 6)
        end = (8 * (align + n)) // 6
        core = encoded[start:end]
        cores.extend([core, core.replace("+", "-").replace("/", "_")])
    return cores


@lru_cache(maxsize=512)
def _compiled(secret: str) -> tuple[str, list[str], list[tuple[str, int]]]:
    """(per-character pattern, base64/hex literals, forms with the fragment length that counts)."""
    # Every spelling starts with the raw first character, '%', '\\' or '+': a leading class lets the
    # regex engine skip other positions quickly (about 5x faster on long text).
    first = re.escape(secret[0]) + "%\\\\+"
    pattern = f"(?=[{first}])" + "".join(_char_pattern(c) for c in secret)
    raw = secret.encode("utf-8")
    literals = sorted(set(_b64_cores(raw) + [raw.hex(), raw.hex().upper()]), key=len, reverse=True)
    texts = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
    }
    texts |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in list(texts)}
    forms = [(f, EDGE_MIN) for f in texts] + [(f, EDGE_MIN_ENCODED) for f in literals if f not in texts]
    return pattern, literals, forms


class Redactor:
    """Masks the given secret values; `Redactor(())` is a cheap no-op."""

    def __init__(self, values: Iterable[str]):
        values = sorted({v for v in values if v}, key=len, reverse=True)
        self.active = bool(values)
        long_values = [v for v in values if len(v) >= MIN_SECRET_LENGTH]
        short_values = [v for v in values if len(v) < MIN_SECRET_LENGTH]
        patterns, literals, forms = [], [], []
        for v in long_values:
            p, lits, fs = _compiled(v)
            patterns.append(p)
            literals.extend(lits)
            forms.extend(fs)
        patterns.extend(re.escape(v) for v in short_values)  # legacy values: raw form only
        self._pattern = re.compile("|".join(patterns)) if patterns else None
        self._literals = (
            re.compile("|".join(map(re.escape, sorted(set(literals), key=len, reverse=True)))) if literals else None
        )
        self._forms = sorted(set(forms), key=lambda f: len(f[0]), reverse=True)
        # Where a fragment can start (a form's first EDGE_MIN.. characters) or end (its last ones):
        # one regex pass per string finds the few candidates the loops above then check.
        self._longest_form = max((len(f) for f, _ in self._forms), default=0)
        starts = sorted({f[:m] for f, m in self._forms}, key=len, reverse=True)
        ends = sorted({f[-m:] for f, m in self._forms}, key=len, reverse=True)
        self._starts = re.compile("(?=" + "|".join(map(re.escape, starts)) + ")") if starts else _NEVER
        self._ends = re.compile("(?=(" + "|".join(map(re.escape, ends)) + "))") if ends else _NEVER

    def __bool__(self) -> bool:
        return self.active

    # ---- JSON values ---------------------------------------------------------------------
    def redact(self, value: Any) -> Any:
        """The value with every secret masked: strings, dict keys and values, lists, numbers."""
        if not self.active:
            return value
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {(self.redact_text(k) if isinstance(k, str) else k): self._walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._walk(v) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            text = str(value)
            masked = self.redact_text(text, edges=False)  # numbers are never cut
            return value if masked == text else masked
        return value

    def truncate(self, text: str, limit: int, marker: str = "…") -> str:
        """Cut `text` to at most `limit` characters without ever cutting through a secret."""
        text = self.redact_text(text)
        if len(text) <= limit:
            return text
        return self.redact_text(text[:limit] + marker)

    # ---- strings -----------------------------------------------------------------------
    def redact_text(self, text: str, *, edges: bool = True) -> str:
        if not self.active or not text:
            return text
        spans: list[tuple[int, int]] = []
        if self._pattern is not None:
            spans.extend(m.span() for m in self._pattern.finditer(text) if m.end() > m.start())
        if self._literals is not None:
            for m in self._literals.finditer(text):
                start, end = m.span()
                while start > 0 and text[start - 1] in _B64_CHARS:
                    start -= 1
                while end < len(text) and text[end] in _B64_CHARS:
                    end += 1
                while end < len(text) and text[end] == "=":
                    end += 1
                spans.append((start, end))
        if edges:
            spans.extend(self._edge_spans(text))
        if not spans:
            return text
        spans.sort()
        out, pos = [], 0
        for start, end in spans:
            if end <= pos:
                continue
            if start > pos:
                out.append(text[pos:start])
            elif out and out[-1] == MASK:
                pos = end
                continue
            out.append(MASK)
            pos = max(pos, end)
        out.append(text[pos:])
        return "".join(out)

    def _edge_spans(self, text: str) -> list[tuple[int, int]]:
        """A head that ends a secret's form, a tail that starts one (the marks a cut leaves)."""
        body_end = len(text)
        for mark in _ELLIPSES:
            if text.endswith(mark):
                body_end -= len(mark)
                break
        spans = []
        tail_start = self._longest_tail_fragment(text, body_end)
        if tail_start is not None:
            spans.append((tail_start, body_end))
        head_end = self._longest_head_fragment(text)
        if head_end is not None:
            spans.append((0, head_end))
        return spans

    def _longest_tail_fragment(self, text: str, end: int) -> int | None:
        """Start of the longest tail of text[:end] that is a proper prefix of a form, if any."""
        lo = max(0, end - self._longest_form + 1)
        for m in self._starts.finditer(text, lo, end):  # ascending: the first hit is the longest
            fragment = text[m.start() : end]
            for form, minimum in self._forms:
                if minimum <= len(fragment) < len(form) and form.startswith(fragment):
                    return m.start()
        return None

    def _longest_head_fragment(self, text: str) -> int | None:
        """End of the longest head of text that is a proper suffix of a form, if any."""
        hi = min(len(text), self._longest_form - 1)
        for m in reversed(list(self._ends.finditer(text, 0, hi))):  # the last hit is the longest
            fragment = text[: m.end(1)]
            for form, minimum in self._forms:
                if minimum <= len(fragment) < len(form) and form.endswith(fragment):
                    return m.end(1)
        return None
