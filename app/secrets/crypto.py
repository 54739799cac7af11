"""AES-256-GCM for values at rest (project secrets, webhook signing secrets)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class Cipher:
    def __init__(self, key_b64: str):
        raw = base64.b64decode(key_b64)
        self._aead = AESGCM(raw)
        self._mac_root = hmac.new(raw, b"meshhook-derived-keys", hashlib.sha256).digest()

    def derive_key(self, label: str) -> bytes:
        """A separate 32-byte key for another purpose (e.g. signing list cursors), stable across restarts and
        the same on every instance that shares MESHHOOK_SECRET_KEY."""
        return hmac.new(self._mac_root, label.encode(), hashlib.sha256).digest()

    def encrypt(self, plaintext: str, context: str) -> tuple[bytes, bytes]:
        """Returns (nonce, ciphertext); `context` binds the value to its owner (associated data)."""
        nonce = os.urandom(12)
        return nonce, self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def decrypt(self, nonce: bytes, ciphertext: bytes, context: str) -> str:
        return self._aead.decrypt(nonce, ciphertext, context.encode()).decode()
