"""The embedded default: a real PostgreSQL from the `pgserver` wheel, plus locally kept keys.

Used when no DATABASE_URL is set. Data lives in a per-user directory
(``MESHHOOK_DATA_DIR`` or ``~/.local/share/meshhook``); the server listens on a Unix
socket only and is stopped when the last process using it exits.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

_server = None


def data_dir() -> Path:
    from app.settings import get_settings

    configured = get_settings().data_dir
    base = (
        Path(configured)
        if configured
        else Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "meshhook"
    )
    base.mkdir(parents=True, exist_ok=True)
    return base


def kept_value(name: str, make) -> str:
    """A value generated once and kept in the data dir (dev JWT secret, encryption key)."""
    path = data_dir() / name
    if path.exists():
        return path.read_text().strip()
    # Two processes starting at once (`serve` and `meshhook token`) must agree: write a private temp
    # file, then link it into place, which fails if the other one was first; then both read the winner.
    tmp = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def local_jwt_secret() -> str:
    return kept_value("jwt_secret", lambda: secrets.token_urlsafe(48))


def local_secret_key() -> str:
    return kept_value("secret_key", lambda: base64.b64encode(os.urandom(32)).decode())


def start_embedded(pgdata: Path, *, database: str = "meshhook") -> str:
    """Start (or join) the embedded server and return a URL for `database`, creating it if needed."""
    global _server
    import warnings

    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset; it copes
        warnings.simplefilter("ignore")
        import pgserver

    pgdata.mkdir(parents=True, exist_ok=True)
    _server = pgserver.get_server(str(pgdata), cleanup_mode="stop")
    exists = _server.psql(f"select 1 from pg_database where datname = '{database}';")
    if "1 row" not in exists:
        _server.psql(f'create database "{database}";')
    uri = _server.get_uri(database)
    return uri


def resolve_database_url() -> str:
    from app.settings import get_settings

    settings = get_settings()
    if settings.database_url:
        return settings.database_url
    return start_embedded(data_dir() / "pgdata")
