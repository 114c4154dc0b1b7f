"""Database access shared by every part of fbs-debitor: engines, SQL files, portable values.

Two stores, two connections: the FBS extract (schema ``fbs``) and the integration's own ledger
(schema ``ledger``). On PostgreSQL each engine gets its schema as ``search_path``, so SQL in
``include/sql`` uses unqualified table names and runs unchanged on SQLite, where each store is its
own database file.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from functools import cache
from pathlib import Path

from sqlalchemy import bindparam, create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.sql.elements import TextClause

from fbs_debitor.core.settings import SQL_DIR

CENT = Decimal("0.01")


def normalise_url(url: str | URL) -> URL:
    """Accept the spellings operators paste (postgres://, postgresql://) and pick psycopg 3."""
    u = make_url(str(url).replace("postgres://", "postgresql://", 1) if str(url).startswith("postgres://") else url)
    if u.get_backend_name() == "postgresql" and u.get_driver_name() != "psycopg":
        u = u.set(drivername="postgresql+psycopg")
    return u


def make_engine(url: str | URL, schema: str) -> Engine:
    """An engine whose unqualified table names resolve to ``schema``.

    Bound parameters are hidden from SQLAlchemy's error messages: a failed write of a patron row
    must not put a CPR number into a traceback (and from there into Airflow's logs).

    PostgreSQL: the schema is created when missing and put first on the search_path.
    SQLite: the URL names the store's own file; foreign keys are enforced and WAL is used so the
    Airflow task processes and the CLI can read while one writes.
    """
    u = normalise_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, connect_args={"timeout": 60}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA busy_timeout = 60000")
            if u.database and u.database != ":memory:":
                cur.execute("PRAGMA journal_mode = WAL")
            cur.close()

        return engine
    if u.get_backend_name() != "postgresql":
        raise ValueError(f"unsupported database {u.get_backend_name()!r}: use PostgreSQL or SQLite")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
        raise ValueError(f"bad schema name {schema!r}")
    engine = create_engine(u, connect_args={"options": f"-c search_path={schema}"}, pool_pre_ping=True,
                           hide_parameters=True)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    return engine


def is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"


def safe_url(engine: Engine) -> str:
    """The engine's URL with the password hidden, for messages."""
    return engine.url.render_as_string(hide_password=True)


# --- SQL files ---------------------------------------------------------------------------------

def strip_comments(sql: str) -> str:
    """Remove ``--`` comments (they may mention :parameters, which must not become binds).

    The project's SQL files keep ``--`` and semicolons out of string literals, so this is enough.
    """
    return "\n".join(re.sub(r"--.*$", "", line).rstrip() for line in sql.splitlines())


_INCLUDE = re.compile(r"^[ \t]*--[ \t]*@include[ \t]+(\S+)[ \t]*$", re.MULTILINE)


@cache
def sql_file(relpath: str) -> str:
    """The text of ``include/sql/<relpath>``, comments removed; a line ``-- @include <relpath>``
    is replaced by that file (one level: shared clauses, e.g. the joins two queries must agree on)."""
    text_ = (SQL_DIR / relpath).read_text(encoding="utf-8")
    text_ = _INCLUDE.sub(lambda m: (SQL_DIR / m.group(1)).read_text(encoding="utf-8"), text_)
    return strip_comments(text_)


def split_statements(script: str) -> list[str]:
    """Split a script into statements on ``;`` at line end, after removing comments.

    Avoids depending on a dialect's multi-statement support.
    """
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", strip_comments(script)) if s.strip()]


def run_script(conn: Connection, script: str) -> int:
    statements = split_statements(script)
    for statement in statements:
        conn.exec_driver_sql(statement)
    return len(statements)


# --- Values ------------------------------------------------------------------------------------
# SQLite hands dates, timestamps and amounts back as text or float; PostgreSQL as objects. These
# turn either into the Python type, so domain code never branches on the dialect.

def as_date(value) -> dt.date | None:
    if value is None or isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.datetime):
        return value.date()
    return dt.date.fromisoformat(str(value)[:10])


def as_datetime(value) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    return dt.datetime.fromisoformat(str(value))


def as_amount(value) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value.quantize(CENT)
    return Decimal(str(value)).quantize(CENT)


def as_bool(value) -> bool | None:
    return None if value is None else bool(value)


def db_value(value, sqlite: bool):
    """A Python value as the driver should bind it: SQLite gets ISO text for dates and amounts."""
    if not sqlite:
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds" if not value.microsecond else "microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bool):
        return int(value)
    return value


def in_query(sql: str, *names: str) -> TextClause:
    """``text(sql)`` whose ``:name`` parameters take a list (``... IN :name``)."""
    return text(sql).bindparams(*(bindparam(n, expanding=True) for n in names))


def chunked(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def bulk_insert(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence],
                chunk_size: int = 20_000) -> int:
    """Insert many rows fast: COPY on PostgreSQL, executemany on SQLite. Returns the row count.

    Rows are streamed in chunks, so memory stays flat however many rows come.
    """
    if not re.fullmatch(r"[a-z_]+", table) or not all(re.fullmatch(r"[a-z_]+", c) for c in columns):
        raise ValueError("bad identifier")
    n = 0
    cols = ", ".join(columns)
    dbapi = conn.connection.dbapi_connection
    if is_sqlite(conn):
        sql = f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608 - identifiers checked above
        cur = dbapi.cursor()
        for batch in chunked(rows, chunk_size):
            cur.executemany(sql, [tuple(db_value(v, True) for v in row) for row in batch])
            n += len(batch)
        cur.close()
        return n
    with dbapi.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


# --- one at a time -----------------------------------------------------------------------------

LOCKS = {"payments": 1590_0001, "sending": 1590_0002}


@contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[None]:
    """Hold the named lock of this database while the block runs, waiting for whoever holds it
    (an Airflow task, the CLI, another worker). PostgreSQL: a session advisory lock. SQLite: an
    exclusive ``flock`` on a file next to the database. Not re-entrant: take it once, at the top."""
    key = LOCKS[name]
    if is_sqlite(engine):
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        import fcntl

        with open(f"{database}.{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
