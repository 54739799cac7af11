"""The `meshhook` command: serve, worker, migrate, token, openapi."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import socket
import sys
import uuid


def _settings():
    from app.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        print(exc.code, file=sys.stderr)
        raise SystemExit(2) from None


def _database_url(settings) -> tuple[str, bool]:
    if settings.database_url:
        from app.db.engine import with_pooler

        # The URL carries the pooler mode (pgbouncer=true) to every pool built from it.
        return with_pooler(settings.database_url, settings.db_pooler), False
    from app.db.embedded import data_dir, start_embedded

    try:
        return start_embedded(data_dir() / "pgdata"), True
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        print(f"meshhook: cannot start the embedded PostgreSQL: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _hs_secret(settings, embedded: bool) -> str | None:
    if settings.supabase_jwt_secret:
        return settings.supabase_jwt_secret
    if embedded:
        from app.db.embedded import local_jwt_secret

        return local_jwt_secret()
    return None


def _secret_key(settings) -> str:
    if settings.secret_key:
        return settings.secret_key
    from app.db.embedded import local_secret_key

    return local_secret_key()


def _migrate(url: str) -> None:
    from app.db.migrate import upgrade

    try:
        upgrade(url)
    except Exception as exc:  # noqa: BLE001
        print(f"meshhook: migration failed: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None


def _dev_user() -> str:
    """The dev identity: one user id kept in the data dir, so every `serve` and `token` speaks for the same user."""
    from app.db.embedded import kept_value

    return kept_value("dev_user_id", lambda: str(uuid.uuid4()))


def _bind(host: str, port: int) -> socket.socket:
    """Take the port before anything is printed or started, so a taken port is one clear line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        print(f"meshhook: cannot listen on {host}: {exc.strerror}; pick another with --host", file=sys.stderr)
        raise SystemExit(2) from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
        print(f"meshhook: port {port} on {host} {why}; pick another with --port", file=sys.stderr)
        raise SystemExit(2) from None
    sock.set_inheritable(True)
    return sock


def cmd_serve(args) -> None:
    settings = _settings()
    sock = _bind(args.host, args.port)  # first: a taken port is known before anything else happens

    import uvicorn

    from app.auth.jwt import mint_dev_token
    from app.main import create_app
    from app.observability.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    url, embedded = _database_url(settings)
    _migrate(url)
    secret = _hs_secret(settings, embedded)
    app = create_app(
        settings, database_url=url, jwt_secret=secret, secret_key=_secret_key(settings), run_worker=not args.no_worker
    )
    base = f"http://{args.host}:{args.port}"
    if embedded and secret:
        token = mint_dev_token(secret, _dev_user(), issuer=settings.issuer, ttl_s=12 * 3600)
        print(
            f"\nMeshHook is starting on {base} (embedded PostgreSQL: {url})\n"
            f"A dev token (12 h) for your dev user (the same user on every start; "
            f"`.venv/bin/meshhook token` prints a fresh one):\n  export TOKEN={token}\n"
            f"The run console (the token rides in the URL fragment, which is never sent to a server):\n"
            f"  {base}/console#token={token}\n"
            f'Try:\n  curl -s -X POST {base}/projects -H "Authorization: Bearer $TOKEN"'
            f" -H 'Content-Type: application/json' -d '{{\"name\": \"demo\"}}'\n",
            flush=True,
        )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
    )
    uvicorn.Server(config).run(sockets=[sock])


def cmd_worker(args) -> None:
    from app.engine.worker import Worker
    from app.observability.logging import configure_logging
    from app.secrets.crypto import Cipher

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    url, _ = _database_url(settings)
    if args.migrate:
        _migrate(url)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    worker = Worker(
        settings, url, Cipher(_secret_key(settings)), name=args.name, notify=False if args.no_notify else None
    )
    asyncio.run(worker.run_forever())


def cmd_migrate(args) -> None:
    settings = _settings()
    url, _ = _database_url(settings)
    _migrate(url)
    print("migrations applied")


def cmd_token(args) -> None:
    from app.auth.jwt import mint_dev_token

    settings = _settings()
    try:
        sub = str(uuid.UUID(args.sub)) if args.sub else _dev_user()
    except ValueError:
        print("meshhook: --sub must be a UUID", file=sys.stderr)
        raise SystemExit(2) from None
    secret = settings.supabase_jwt_secret
    if secret is None and settings.database_url is None:
        from app.db.embedded import local_jwt_secret

        secret = local_jwt_secret()
    if not secret:
        print("meshhook: no HS256 secret is configured (set SUPABASE_JWT_SECRET)", file=sys.stderr)
        raise SystemExit(2)
    print(mint_dev_token(secret, sub, issuer=settings.issuer, ttl_s=args.ttl, email=args.email))


def cmd_openapi(args) -> None:
    from app.main import create_app

    spec = create_app().openapi()
    text = json.dumps(spec, indent=2, sort_keys=False) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as fh:
            fh.write(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="meshhook", description="MeshHook engine service")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="run the API (and an in-process worker)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-worker", action="store_true", help="do not run the engine worker in this process")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("worker", help="run an engine worker")
    p.add_argument("--name", default="worker")
    p.add_argument("--migrate", action="store_true", help="apply migrations first")
    p.add_argument("--no-notify", action="store_true", help="poll only (no LISTEN)")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("migrate", help="apply database migrations, then ANALYZE the tables if any was applied")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("token", help="mint a dev token with the local HS256 secret")
    p.add_argument(
        "--sub",
        default=None,
        help="the user id (UUID); default: the dev user kept in the data dir, the one `serve` prints",
    )
    p.add_argument("--ttl", type=_positive_int, default=3600, help="lifetime in seconds (default 3600)")
    p.add_argument("--email", default=None)
    p.set_defaults(func=cmd_token)
    p = sub.add_parser("openapi", help="write the OpenAPI spec")
    p.add_argument("--output", "-o", default="openapi/openapi.json")
    p.set_defaults(func=cmd_openapi)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
