"""What a leak of a secret looks like: every encoding the issue reproduced, and pieces of it."""
from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus


def _b64_cores(raw: bytes) -> list[str]:
    out = []
    for align in range(3):
        enc = base64.b64encode(b"\0" * align + raw + b"\0\0").decode()
        core = enc[-(-8 * align // 6): (8 * (align + len(raw))) // 6]
        out += [core, core.replace("+", "-").replace("/", "_")]
    return out


def leak_forms(secret: str) -> list[str]:
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), quote(secret, safe="").lower(),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             json.dumps(json.dumps(secret))[3:-3], raw.hex(), raw.hex().upper(), *_b64_cores(raw)}
    return sorted(forms, key=len)


def leaks(text: str, secrets: list[str], window: int = 12) -> list[str]:
    """Every form of every secret found in `text`, plus any `window`-character piece of one
    (what a cut would leave)."""
    found = []
    for secret in secrets:
        for form in leak_forms(secret):
            if form in text:
                found.append(form[:40])
            step = max(1, min(50, len(form) // 8))
            for i in range(0, max(1, len(form) - window + 1), step):
                if form[i:i + window] in text:
                    found.append(f"piece {form[i:i + window]!r}")
                    break
    return found
