"""Database access shared by every part of fbs-debitor: engines, SQL files, portable values.

Two stores, two connections: the FBS extract (schema ``fbs``) and the integration's own ledger
(schema ``ledger``). On PostgreSQL each engine gets its schema as ``search_path``, so SQL in
``include/sql`` uses unqualified table names and runs unchanged on SQLite, where each store is its
own database file.

This is the one module that knows which database it talks to. Everything that differs between
PostgreSQL and SQLite is decided here, once:

* bound values: callers bind Python values (``date``, ``datetime``, ``Decimal``, ``bool``); a SQLite
  engine turns them into the ISO text and numbers SQLite stores, before every statement
  (``_sqlite_parameters``), so no caller converts or asks which database it is;
* values read back: ``as_date``, ``as_datetime``, ``as_amount`` and ``as_bool`` accept either
  database's representation;
* bulk loading (``bulk_insert``, ``bulk_load``, ``empty_tables``) and locks (``exclusive``).
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
        event.listen(engine, "before_cursor_execute", _sqlite_parameters, retval=True)

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


def url_for(kind: str | None, host: str | None = None, port: int | None = None, login: str | None = None,
            password: str | None = None, database: str | None = None, name: str = "?") -> str:
    """A SQLAlchemy URL from a connection's parts (an Airflow Connection's conn_type, host, ...):
    ``postgres`` (host, port, login, password, database) or ``sqlite`` (host = the file path)."""
    kind = (kind or "").lower()
    if kind in ("postgres", "postgresql"):
        return URL.create("postgresql+psycopg", username=login or None, password=password or None, host=host or None,
                          port=port or None, database=database or None).render_as_string(hide_password=False)
    if kind == "sqlite":
        return f"sqlite:///{host}"
    raise ValueError(f"connection {name!r}: type {kind!r} is not supported (use postgres or sqlite)")


def _is_sqlite(bind: Engine | Connection) -> bool:
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
# turn either into the Python type, so domain code never branches on the dialect. Going in, a
# SQLite engine converts bound values itself (``_sqlite_parameters``).

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


def _sqlite_value(value):
    """A Python value as SQLite stores it: ISO text for dates and timestamps, text for amounts
    (exact; a NUMERIC column turns it into its number), 0/1 for booleans."""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds" if not value.microsecond else "microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _sqlite_parameters(conn, cursor, statement, parameters, context, executemany):
    """``before_cursor_execute`` on SQLite engines: every bound value as SQLite stores it, for one
    statement (a tuple or dict of values) or many (a list of them)."""
    def one(params):
        if isinstance(params, dict):
            return {k: _sqlite_value(v) for k, v in params.items()}
        return tuple(_sqlite_value(v) for v in params)

    return statement, ([one(p) for p in parameters] if executemany else one(parameters))


def in_query(sql: str, *names: str) -> TextClause:
    """``text(sql)`` whose ``:name`` parameters take a list (``... IN :name``)."""
    return text(sql).bindparams(*(bindparam(n, expanding=True) for n in names))


def keyset_pages(bind: Engine, query, key: str, start, params: dict | None = None,
                 after: str = "after") -> Iterator[list]:
    """The pages of a keyset-paged ``query`` (``... WHERE <key> > :<after> ORDER BY <key> LIMIT ...``,
    the limit among ``params``), each read in a connection of its own, until one is empty. The next
    page is read only when the caller asks for it, after the last row of the page before: a caller
    that changes rows of a page (marks them written, say) sees its change in the next query."""
    while True:
        with bind.connect() as conn:
            rows = conn.execute(query, {**(params or {}), after: start}).all()
        if not rows:
            return
        yield rows
        start = getattr(rows[-1], key)


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
    _check_identifiers([table, *columns])
    n = 0
    cols = ", ".join(columns)
    dbapi = conn.connection.dbapi_connection
    if _is_sqlite(conn):
        sql = f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608 - identifiers checked above
        cur = dbapi.cursor()
        for batch in chunked(rows, chunk_size):
            cur.executemany(sql, [tuple(_sqlite_value(v) for v in row) for row in batch])
            n += len(batch)
        cur.close()
        return n
    with dbapi.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


@contextmanager
def bulk_load(conn: Connection, tables: Sequence[str]) -> Iterator[None]:
    """Around a large load into ``tables``: on SQLite a 256 MB page cache while a million rows go
    into randomly ordered indexes (the default 2 MB thrashes), the connection's own setting back
    afterwards; on PostgreSQL fresh planner statistics for the loaded tables when the load is done."""
    _check_identifiers(tables)
    if _is_sqlite(conn):
        cache_size = conn.exec_driver_sql("PRAGMA cache_size").scalar()
        conn.exec_driver_sql("PRAGMA cache_size = -262144")
        try:
            yield
        finally:
            conn.exec_driver_sql(f"PRAGMA cache_size = {int(cache_size)}")
        return
    yield
    for table in tables:
        conn.exec_driver_sql(f"ANALYZE {table}")


def empty_tables(conn: Connection, tables: Sequence[str], self_references: dict[str, str] | None = None) -> None:
    """Delete every row of ``tables``, given children first. PostgreSQL: one TRUNCATE of them all
    (DELETE would check unindexed foreign keys row by row). SQLite: the self-referencing columns
    (``{table: column}``) set to NULL first, then DELETE in the given order."""
    _check_identifiers([*tables, *(self_references or {}), *(self_references or {}).values()])
    if not _is_sqlite(conn):
        conn.exec_driver_sql(f"TRUNCATE TABLE {', '.join(tables)}")
        return
    for table, column in (self_references or {}).items():
        conn.exec_driver_sql(f"UPDATE {table} SET {column} = NULL WHERE {column} IS NOT NULL")  # noqa: S608 - checked
    for table in tables:
        conn.exec_driver_sql(f"DELETE FROM {table}")  # noqa: S608 - identifiers checked above


def _check_identifiers(names: Iterable[str]) -> None:
    if not all(re.fullmatch(r"[a-z_]+", n) for n in names):
        raise ValueError("bad identifier")


# --- one at a time -----------------------------------------------------------------------------

LOCKS = {"payments": 1590_0001, "sending": 1590_0002}


@contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[None]:
    """Hold the named lock of this database while the block runs, waiting for whoever holds it
    (an Airflow task, the CLI, another worker). PostgreSQL: a session advisory lock. SQLite: an
    exclusive ``flock`` on a file next to the database. Not re-entrant: take it once, at the top."""
    key = LOCKS[name]
    if _is_sqlite(engine):
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
