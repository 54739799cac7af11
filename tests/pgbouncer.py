"""A real PgBouncer in transaction mode in front of the test (or bench) database server.

The Debian package `pgbouncer` provides the binary. Missing, it is installed with apt-get when
this runs as root with apt available; otherwise setup fails loudly saying what to install.
PgBouncer refuses to run as root, so as root it is started with `-u postgres` (or `nobody`)
and its files are made readable for that user.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

INSTALL_HINT = ("PgBouncer is required by the pooler tests and benchmark: install the Debian/Ubuntu package "
                "`pgbouncer` (sudo apt-get install -y pgbouncer), or `brew install pgbouncer` on macOS, "
                "or put a `pgbouncer` binary on PATH (PGBOUNCER=/path/to/pgbouncer).")


class PgBouncerMissing(RuntimeError):
    pass


def find_pgbouncer(install: bool = True) -> str:
    """The pgbouncer binary; installed with apt-get when missing and allowed (root with apt)."""
    candidates = [os.environ.get("PGBOUNCER"), shutil.which("pgbouncer"), "/usr/sbin/pgbouncer",
                  "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer", "/opt/homebrew/bin/pgbouncer"]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        done = subprocess.run("apt-get update -qq && apt-get install -y -qq pgbouncer", shell=True, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600, check=False)
        if done.returncode == 0:
            return find_pgbouncer(install=False)
        raise PgBouncerMissing(f"apt-get install pgbouncer failed:\n{done.stdout.decode(errors='replace')[-2000:]}"
                               f"\n{INSTALL_HINT}")
    raise PgBouncerMissing(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PgBouncerMissing("running as root and neither a `postgres` nor a `nobody` user exists for PgBouncer")


class PgBouncer:
    """`pool_mode = transaction` on a free loopback port, forwarding every database name to the
    server of `server_url` with the same user and password."""

    def __init__(self, server_url: str, *, pool_mode: str = "transaction", pool_size: int = 20,
                 max_client_conn: int = 1000):
        self.server = urlsplit(server_url)
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="meshhook-pgbouncer-"))
        self.proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "pgbouncer.log"

    def url(self, database_url: str) -> str:
        """`database_url` (on the server this fronts) as seen through the pooler."""
        parts = urlsplit(database_url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit((parts.scheme, f"{userinfo}127.0.0.1:{self.port}", parts.path, parts.query, ""))

    def _write_config(self) -> Path:
        user = unquote(self.server.username or "postgres")
        password = unquote(self.server.password or "")
        host = self.server.hostname or "127.0.0.1"
        port = self.server.port or 5432
        (self.dir / "userlist.txt").write_text(f'"{user}" "{password}"\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(f"""[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = {"md5" if password else "trust"}
auth_file = {self.dir / "userlist.txt"}
pool_mode = {self.pool_mode}
default_pool_size = {self.pool_size}
min_pool_size = 0
max_client_conn = {self.max_client_conn}
max_db_connections = 0
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = {self.log_path}
pidfile = {self.dir / "pgbouncer.pid"}
admin_users = {user}
log_connections = 0
log_disconnections = 0
""")
        return ini

    def start(self, timeout_s: float = 20) -> PgBouncer:
        binary = find_pgbouncer()
        ini = self._write_config()
        args = [binary, str(ini)]
        who = _run_as()
        if who is not None:
            for p in (self.dir, *self.dir.iterdir()):
                os.chown(p, who.pw_uid, who.pw_gid)
            args += ["-u", who.pw_name]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"pgbouncer exited ({self.proc.returncode}): {out[-1500:]}{log[-1500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen on 127.0.0.1:{self.port} within {timeout_s}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
