"""A throwaway PostgreSQL cluster for the test session.

Used when FBS_DEBITOR_TEST_PG_URL is not set: finds ``initdb``/``pg_ctl`` (PATH or
/usr/lib/postgresql/*/bin), creates a cluster in a temporary directory owned by the ``postgres``
user when running as root (initdb refuses root), listens on loopback only, trust auth, a free port,
and is stopped and deleted at the end of the session.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def _find(binary: str) -> str | None:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{binary}"), reverse=True)
    return shutil.which(binary) or (candidates[0] if candidates else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayCluster:
    def __init__(self) -> None:
        self.initdb = _find("initdb")
        self.pg_ctl = _find("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise PostgresUnavailable("initdb/pg_ctl not found (apt-get install postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="fbs-debitor-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> str:
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60")
        self._run(self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.root / "server.log"), "-w",
                  "-t", "60", "start")
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
            except OSError:
                time.sleep(0.2)
        raise PostgresUnavailable("PostgreSQL did not start listening")

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop")
        except PostgresUnavailable:
            pass
        # A whole run leaves hundreds of databases here (every PostgreSQL test makes two), and
        # deleting them takes about a minute (70 ms a database): a process of its own deletes the
        # stopped cluster's folder, so the session does not wait for it.
        try:
            subprocess.Popen(["rm", "-rf", "--", str(self.root)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        except OSError:
            shutil.rmtree(self.root, ignore_errors=True)


def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    """A fresh database on the server behind ``admin_url`` (a copy of the database ``template``
    when given); returns its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(admin_url)
    conninfo = f"host={u.host} port={u.port} user={u.username} dbname={u.database}"
    if u.password:
        conninfo += f" password={u.password}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return u.set(database=name).render_as_string(hide_password=False)
