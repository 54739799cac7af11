"""Storable values: what a step computes or receives is turned into something PostgreSQL jsonb and
orjson can hold (NUL escaped, lone surrogates replaced), or refused with a typed error; response
bodies are stored as JSON, text or base64."""
from __future__ import annotations

import base64
import json
import math

import orjson
import pytest

from app.engine.steps.bodies import decode_body
from app.storable import (
    MAX_JSON_DEPTH,
    NUL_ESCAPE,
    Unstorable,
    storable_text,
    to_storable,
)
from tests.support import BYTES_BODIES, PNG_1X1


def nested(depth: int, leaf="1") -> object:
    return json.loads("[" * depth + leaf + "]" * depth)


def test_nul_is_escaped_visibly_in_strings_and_keys():
    assert NUL_ESCAPE == "\\u0000" and len(NUL_ESCAPE) == 6
    assert to_storable("a\x00b") == "a\\u0000b"
    assert to_storable({"k\x00": ["\x00", {"x": "\x00\x00"}]}) == {"k\\u0000": ["\\u0000", {"x": "\\u0000\\u0000"}]}


def test_unpaired_surrogates_are_replaced_and_pairs_become_their_character():
    assert storable_text("a\ud800b") == "a\ufffdb"
    assert storable_text("\udfff") == "\ufffd"
    assert storable_text("\ud83d\ude00") == "\U0001f600"
    assert storable_text("déjà vu ✓") == "déjà vu ✓"


def test_storable_values_come_back_as_the_same_object():
    value = {"a": [1, 2.5, "x", None, True, {"b": "ü"}], "c": -(2**63), "d": 2**64 - 1}
    assert to_storable(value) is value
    orjson.dumps(value)  # and orjson can write it


@pytest.mark.parametrize("value, message", [
    (2**64, "64-bit"), (-(2**63) - 1, "64-bit"), (math.nan, "NaN"), (math.inf, "Infinity"),
    ({"x": [float("-inf")]}, "NaN and Infinity"), (b"bytes", "type bytes"), ({1: "a"}, "key of type int"),
    (nested(MAX_JSON_DEPTH + 1), f"deeper than {MAX_JSON_DEPTH} levels"),
])
def test_what_has_no_storable_form_is_refused_with_a_typed_error(value, message):
    with pytest.raises(Unstorable, match=message) as info:
        to_storable(value)
    assert info.value.error_type == "unstorable_output"


def test_nesting_up_to_the_limit_is_stored():
    assert to_storable(nested(MAX_JSON_DEPTH)) == nested(MAX_JSON_DEPTH)
    assert to_storable(nested(MAX_JSON_DEPTH + 1, "")) == nested(MAX_JSON_DEPTH + 1, "")  # innermost is empty


def test_shared_values_are_converted_once_not_expanded():
    v: object = "x\x00"
    for _ in range(60):  # 2^60 leaves once serialized
        v = [v, v]
    out = to_storable(v)
    for _ in range(59):
        assert out[0] is out[1]  # still shared
        out = out[0]
    assert out == ["x\\u0000", "x\\u0000"]
    deep: object = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep, deep]
    with pytest.raises(Unstorable):
        to_storable(deep)


def test_a_png_body_is_stored_as_base64_with_its_content_type():
    body = decode_body(PNG_1X1, "image/png", False)
    assert body == {"base64": base64.b64encode(PNG_1X1).decode(), "content_type": "image/png"}
    assert base64.b64decode(body["base64"]) == PNG_1X1
    assert decode_body(b"caf\xe9", "text/plain; charset=latin-1", False)["base64"] == "Y2Fm6Q=="


def test_json_and_text_bodies_with_nul_are_stored_escaped():
    raw, ctype = BYTES_BODIES["nuljson"]
    assert decode_body(raw, ctype, False) == {"name": "a\\u0000b", "list": ["\\u0000"], "key\\u0000": 1}
    raw, ctype = BYTES_BODIES["nultext"]
    assert decode_body(raw, ctype, False) == "line one\\u0000line two\\u0000"


def test_other_bodies_keep_their_shape():
    assert decode_body(b'{"a": [1, "\xc3\xbc"]}', "application/json", False) == {"a": [1, "ü"]}
    assert decode_body(b"", "application/json", False) == ""
    assert decode_body(b"not json", "application/json", False) == "not json"
    assert decode_body(b"<p>hi</p>", "text/html", False) == "<p>hi</p>"
    # JSON that cannot be stored as parsed (too deep) is kept as its text.
    deep = b"[" * 100 + b"]" * 100
    assert decode_body(deep, "application/json", False) == deep.decode()


def test_a_cut_body_is_text_even_when_the_cut_splits_a_character():
    assert decode_body('{"a": "ü'.encode()[:-1], "application/json", True) == '{"a": "'
    assert decode_body(b"\xff\xfe binary", "application/octet-stream", True)["content_type"] == \
        "application/octet-stream"
