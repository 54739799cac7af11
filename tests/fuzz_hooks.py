"""Schemathesis hooks for tests/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS): sign webhook
deliveries for the seeded workflow, so the fuzzer reaches the body handling of POST /hooks/{workflow_id}
instead of stopping at the signature check. Cases whose generated headers already carry a signature
keep it, so bad signatures are fuzzed too."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid

import schemathesis
from schemathesis.core import NOT_SET

SECRET = os.environ.get("MESHHOOK_FUZZ_WEBHOOK_SECRET", "")


def _negative(case) -> bool:
    """Whether schemathesis generated this case to be invalid: leave those unsigned, to be rejected."""
    meta = getattr(case, "_meta", None)
    return meta is not None and any(c.mode.is_negative for c in meta.components.values())


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path != "/hooks/{workflow_id}" or not SECRET:
        return
    headers = case.headers if case.headers is not None else {}
    if any(k.lower() in ("webhook-signature", "webhook-timestamp", "webhook-id") for k in headers) or _negative(case):
        return  # leave generated (possibly invalid) signing headers alone: they must be rejected
    body = case.body
    if body is NOT_SET:
        raw = b""
    elif isinstance(body, (bytes, bytearray)):
        raw = bytes(body)
    else:
        # Exactly the bytes the requests transport sends for `json=body` (changing case.body instead
        # would make schemathesis judge the case anew).
        from requests.compat import json as requests_json

        raw = requests_json.dumps(body, allow_nan=False).encode("utf-8")
    ts = str(int(time.time()))
    msg_id = f"fuzz_{uuid.uuid4().hex}"
    key = base64.b64decode(SECRET.removeprefix("whsec_") + "==")
    headers["webhook-id"] = msg_id
    headers["webhook-timestamp"] = ts
    headers["webhook-signature"] = "v1," + base64.b64encode(
        hmac.new(key, f"{msg_id}.{ts}.".encode() + raw, hashlib.sha256).digest()).decode()
    case.headers = headers
