"""How an upstream's response body is stored: parsed JSON when it is JSON, text when it is UTF-8,
otherwise `{"base64": …, "content_type": …}`; NUL in text is escaped (app/storable.py), so any
bytes an upstream returns can be stored."""

from __future__ import annotations

import base64
import codecs
from typing import Any

import orjson

from app.storable import Unstorable, storable_text, to_storable


def decode_body(content: bytes, content_type: str, cut: bool) -> Any:
    """The storable form of a response body. `cut` means the body was truncated at the read limit:
    it is then never parsed as JSON, and a UTF-8 character split by the cut is dropped.

    Never raises: JSON that cannot be stored as parsed (64-bit overflow, too deep) is kept as text."""
    if "json" in content_type.lower() and not cut:
        try:
            return to_storable(orjson.loads(content))
        except (orjson.JSONDecodeError, Unstorable):
            pass
    try:
        # A cut body may end inside a multi-byte character: an incremental decoder leaves it out.
        text = codecs.getincrementaldecoder("utf-8")().decode(content, final=not cut)
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(content).decode("ascii"), "content_type": content_type}
    return storable_text(text)
