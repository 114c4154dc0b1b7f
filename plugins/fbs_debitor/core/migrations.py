"""Versioned migrations of the ledger schema.

Migration files are ``include/sql/ledger/NNNN_name.sql``, applied in order, each in its own
transaction, and recorded in ``schema_migration`` with a checksum. A recorded migration whose file
has since changed is an error: a ledger is never silently rebuilt differently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.core.db import run_script
from fbs_debitor.core.settings import SQL_DIR

MIGRATIONS_DIR = SQL_DIR / "ledger"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def available(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return found


def applied(engine: Engine) -> dict[int, str]:
    with engine.begin() as conn:
        _ensure_table(conn)
        return {v: c for v, c in conn.execute(text("SELECT version, checksum FROM schema_migration"))}


def pending(engine: Engine, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """The versions not yet applied to this ledger (a reader refuses a ledger behind the code)."""
    done = applied(engine)
    return [m.version for m in available(directory) if m.version not in done]


def _ensure_table(conn) -> None:
    conn.exec_driver_sql(
        "CREATE TABLE IF NOT EXISTS schema_migration ("
        " version INTEGER NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL,"
        " checksum CHAR(64) NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )


def migrate(engine: Engine, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Bring the ledger to the newest version. Returns the versions applied now (may be none)."""
    done = applied(engine)
    newly = []
    for migration in available(directory):
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                raise MigrationError(
                    f"ledger migration {migration.version:04d}_{migration.name} was changed after it was "
                    "applied; add a new migration instead of editing an applied one"
                )
            continue
        with engine.begin() as conn:
            run_script(conn, migration.path.read_text(encoding="utf-8"))
            conn.execute(
                text("INSERT INTO schema_migration (version, name, checksum, applied_at) VALUES (:v, :n, :c, :t)"),
                {"v": migration.version, "n": migration.name, "c": migration.checksum,
                 "t": dt.datetime.now().replace(microsecond=0)},
            )
        newly.append(migration.version)
    return newly
