"""AES-256-GCM for values at rest (project secrets, webhook signing secrets)."""
from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class Cipher:
    def __init__(self, key_b64: str):
        self._aead = AESGCM(base64.b64decode(key_b64))

    def encrypt(self, plaintext: str, context: str) -> tuple[bytes, bytes]:
        """Returns (nonce, ciphertext); `context` binds the value to its owner (associated data)."""
        nonce = os.urandom(12)
        return nonce, self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def decrypt(self, nonce: bytes, ciphertext: bytes, context: str) -> str:
        return self._aead.decrypt(nonce, ciphertext, context.encode()).decode()
