"""Rules for secrets: editors write them; only the worker reads them, at execution time."""

from __future__ import annotations

import uuid

from app.db.engine import Tx
from app.projects.service import require_role
from app.secrets.crypto import Cipher
from app.secrets.repository import SecretRepository


def _context(project_id: uuid.UUID, name: str) -> str:
    return f"secret:{project_id}:{name}"


async def put_secret(tx: Tx, cipher: Cipher, project_id: uuid.UUID, name: str, value: str) -> None:
    await require_role(tx, project_id, "editor")
    nonce, ct = cipher.encrypt(value, _context(project_id, name))
    await SecretRepository(tx).upsert(project_id, name, nonce, ct)


async def resolve_secrets(tx: Tx, cipher: Cipher, project_id: uuid.UUID) -> dict[str, str]:
    rows = await SecretRepository(tx).all_encrypted(project_id)
    return {r["name"]: cipher.decrypt(r["nonce"], r["ciphertext"], _context(project_id, r["name"])) for r in rows}
