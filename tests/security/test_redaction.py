"""The redactor on its own: every form of a secret is masked, and no cut can show part of one.
(What a viewer sees through the API is covered in test_secret_leaks.py.)"""
from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from app.secrets.redaction import Redactor

SECRET = 'hu+nt/er2="pw\\x & ü'


def forms(s: str) -> dict[str, str]:
    raw = s.encode()
    return {
        "raw": s, "quote": quote(s, safe=""), "quote_path": quote(s), "quote_plus": quote_plus(s),
        "quote_lower": quote(s, safe="").lower(), "double_quoted": quote(quote(s, safe=""), safe=""),
        "json_ascii": json.dumps(s), "json_utf8": json.dumps(s, ensure_ascii=False),
        "json_twice": json.dumps(json.dumps(s)),
        "b64": base64.b64encode(raw).decode(), "b64_nopad": base64.b64encode(raw).decode().rstrip("="),
        "b64_url": base64.urlsafe_b64encode(raw).decode(),
        "basic": "Basic " + base64.b64encode(b"user:" + raw).decode(),
        "basic_1": base64.b64encode(b"u:" + raw).decode(), "basic_2": base64.b64encode(b"us:" + raw).decode(),
        "b64_url_aligned": base64.urlsafe_b64encode(b"ab" + raw + b"z").decode().rstrip("="),
        "hex": raw.hex(), "HEX": raw.hex().upper(),
    }


@pytest.mark.parametrize("name", list(forms(SECRET)))
def test_every_form_is_masked_inside_text_and_json(name):
    form = forms(SECRET)[name]
    r = Redactor([SECRET])
    for text in (form, f"before {form} after", f"url=https://x/?q={form}&y=1"):
        out = r.redact({"k": text, "list": [text], text: 1})
        dumped = json.dumps(out, ensure_ascii=False)
        assert "***" in dumped
        for part in (SECRET, SECRET[:8], SECRET[-8:], form):
            assert part not in dumped, (name, dumped)


@pytest.mark.parametrize("limit", [1, 3, 5, 9, 12, 17, 30, 100])
def test_a_cut_never_leaves_part_of_a_secret(limit):
    long_secret = "S3cr3t-" + "abcdefghij" * 300  # 3,007 characters
    r = Redactor([long_secret])
    text = "error body: " + long_secret + " tail"
    for cut in (text[: len("error body: ") + limit], text[: len("error body: ") + limit] + "…"):
        out = r.redact(cut)
        assert "abcdefghij"[:4] not in out and "S3cr" not in out, out
    assert r.truncate(text, 2048) == "error body: *** tail"  # redacted before the cut
    assert "abcd" not in r.redact(text[-(len(" tail") + limit + 4):])  # a head cut shows no suffix either


def test_truncate_cuts_through_the_mask_only():
    r = Redactor(["correct-horse-battery"])
    out = r.truncate("x" * 10 + "correct-horse-battery" + "y" * 50, 14)
    assert out == "x" * 10 + "***" + "…" or out.startswith("x" * 10 + "***")
    assert "corr" not in out


def test_numbers_and_keys_are_masked():
    r = Redactor(["12345678"])
    assert r.redact({"12345678": 12345678, "n": 9123456789, "flag": True}) == \
        {"***": "***", "n": "9***9", "flag": True}


def test_unrelated_text_is_left_alone():
    r = Redactor(["sk_live_0123456789abcdef"])
    text = {"status": 200, "headers": {"connection": "keep-alive", "content-type": "application/json"},
            "id": "5f0c7a5e-8f43-4c1f-a3c9-0b9d3a0e4d21", "body": "hello world"}
    assert r.redact(text) == text


def test_no_secrets_is_a_no_op():
    value = {"a": ["b", 1]}
    assert Redactor([]).redact(value) is value
    assert not Redactor([])


def test_legacy_short_values_are_masked_raw_only():
    r = Redactor(["pw12"])
    assert r.redact("pw12 and cHcxMg==") == "*** and cHcxMg=="


# ---------------------------------------------------------------- property: no cut shows a secret
from hypothesis import given, settings  # noqa: E402 - kept next to the property it serves
from hypothesis import strategies as st  # noqa: E402

ENCODINGS = {
    "raw": (lambda s: s, 4), "quote": (lambda s: quote(s, safe=""), 4), "quote_plus": (quote_plus, 4),
    "json": (lambda s: json.dumps(s)[1:-1], 4), "json_ascii_off": (lambda s: json.dumps(s, ensure_ascii=False)[1:-1], 4),
    "hex": (lambda s: s.encode().hex(), 8), "b64": (lambda s: base64.b64encode(s.encode()).decode(), 8),
}
FILL = "·"  # never part of any encoding above


@settings(max_examples=300, deadline=None)
@given(secret=st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters=FILL),
                      min_size=8, max_size=60),
       encoding=st.sampled_from(sorted(ENCODINGS)), before=st.integers(0, 20), after=st.integers(0, 20),
       cut=st.floats(0, 1), marker=st.sampled_from(["", "…"]))
def test_no_cut_of_any_encoding_shows_more_than_a_sliver(secret, encoding, before, after, cut, marker):
    encode, sliver = ENCODINGS[encoding]
    r = Redactor([secret])
    text = FILL * before + encode(secret) + FILL * after
    cut_text = text[: int(len(text) * cut)] + marker
    for shown in (r.redact(text), r.redact(cut_text), r.truncate(text, max(1, int(len(text) * cut)))):
        rest = shown.replace("***", "").replace("…", "").replace(FILL, "")
        assert len(rest) < sliver, (shown, text)
