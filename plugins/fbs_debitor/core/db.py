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
  database's representation; ``exact_amount`` and ``usable_date`` / ``usable_timestamp`` read FBS's
  values without changing them, and refuse (``Unreadable``) what cannot be read as it is;
* values that do not fit their column: SQLite keeps any type in any column and any bytes in a text
  column; PostgreSQL keeps dates beyond the years Python can hold (1-9999). Neither stops a read:
  text that is not UTF-8 comes back with its bad bytes as lone surrogates (``surrogateescape``), a
  date or timestamp Python cannot hold comes back as its text. The readers then refuse them, one
  value of one row at a time, so one bad record never fails the page it is in (``is_timestamp``
  tells SQL the same);
* bulk loading (``bulk_insert``, ``bulk_load``, ``empty_tables``) and locks (``exclusive``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from functools import cache, lru_cache, partial
from pathlib import Path

import psycopg
from psycopg.adapt import Loader
from psycopg.pq import Format
from sqlalchemy import bindparam, create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import TextClause

from fbs_debitor.core.identity import mask_cprs_in
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
            # Text that is not valid UTF-8 is read as it is (bad bytes as lone surrogates) instead of
            # failing the whole query with the value in the error message (a CPR number, say).
            dbapi_conn.text_factory = _decode_text
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
    event.listen(engine, "connect", _tolerant_dates)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    return engine


# SQLite's text_factory: called for every text value read, so a C callable, no Python frame per value
# (a page of claim rows is a million values).
_decode_text = partial(str, encoding="utf-8", errors="surrogateescape")


class _TolerantLoader(Loader):
    """A date or timestamp Python cannot hold (beyond year 9999, before year 1, infinity) read as
    its text instead of failing the whole result: ``usable_date`` / ``usable_timestamp`` then
    refuse it for its own row. Wraps psycopg's own loader (C, not subclassable)."""

    inner: type

    def __init__(self, oid, context=None):
        super().__init__(oid, context)
        self._inner = self.inner(oid, context)

    def load(self, data):
        try:
            return self._inner.load(data)
        except psycopg.DataError:
            return bytes(data).decode("utf-8", "replace")


def _tolerant_dates(dbapi_conn, _record) -> None:
    adapters = dbapi_conn.adapters
    for name in ("date", "timestamp", "timestamptz"):
        oid = adapters.types[name].oid
        inner = adapters.get_loader(oid, Format.TEXT)
        adapters.register_loader(oid, type(f"Tolerant{inner.__name__}", (_TolerantLoader,), {"inner": inner}))


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


def embedded(bind: Engine | Connection) -> bool:
    """True on the embedded default (SQLite): for the few callers outside this module that tune it."""
    return _is_sqlite(bind)


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

class Unreadable(ValueError):
    """A value that cannot be read as what its column should hold. The message says why, never
    the value (it might be a CPR number typed into the wrong field)."""


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")   # what SQL compares as a date, too (``is_timestamp``)


def _iso_text(value) -> str:
    if isinstance(value, bytes):
        raise Unreadable("not text")
    if not isinstance(value, str):
        raise Unreadable(f"a value of type {type(value).__name__}, not ISO text")
    if not _ISO_DATE.match(value):
        raise Unreadable("not an ISO date (YYYY-MM-DD)")
    return value


def as_date(value) -> dt.date | None:
    """A date from either database: a date, a timestamp (its day), or ISO text ``YYYY-MM-DD``
    with or without a time. Anything else raises ``Unreadable`` (a ValueError), never a value cut
    to fit."""
    if value is None or isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.datetime):
        return value.date()
    text_ = _iso_text(value)
    try:
        return dt.date.fromisoformat(text_)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text_).date()
    except ValueError:
        raise Unreadable("not a valid date") from None


def as_datetime(value) -> dt.datetime | None:
    """A timestamp from either database (a date counts as its midnight); ISO text as ``as_date``."""
    if value is None or isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    try:
        return dt.datetime.fromisoformat(_iso_text(value))
    except Unreadable:
        raise
    except ValueError:
        raise Unreadable("not a valid date and time") from None


def shown(value, limit: int = 40) -> str:
    """A value read from FBS as a message may show it: text quoted, CPR-shaped numbers masked,
    control characters and bytes that were not UTF-8 escaped (``\\x1b``, ``\\xff``: a message
    must be storable and printable), cut to ``limit`` characters with an ellipsis."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if not isinstance(value, str):
        return mask_cprs_in(str(value))[:limit]

    def one(ch: str) -> str:
        if 0xDC80 <= ord(ch) <= 0xDCFF:               # a byte that was not UTF-8 (surrogateescape)
            return f"\\x{ord(ch) - 0xDC00:02x}"
        if 0xD800 <= ord(ch) <= 0xDFFF or not ch.isprintable():
            return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"
        return ch

    text_ = mask_cprs_in("".join(one(ch) for ch in value))
    return f"'{text_}'" if len(text_) <= limit else f"'{text_[:limit]}…'"


# Dates the integration can use: four-digit years, with room for a claim's date arithmetic (a
# fee's due date is the loan's due date plus a day plus the payment term). The FBS readers below are
# pure functions of the value and a page repeats values (a loan's dates, a patron's birth date,
# amounts), so they are memoised, bounded, per type (1 and 1.0 are read apart).
_MEMO = 1 << 16
FIRST_DATE = dt.date(1, 1, 1)
LAST_DATE = dt.date(9998, 12, 31)


@lru_cache(maxsize=_MEMO, typed=True)
def usable_date(value) -> dt.date | None:
    """An FBS date (``as_date``) that a claim can carry: ``Unreadable`` outside FIRST_DATE..LAST_DATE."""
    day = as_date(value)
    if day is not None and not FIRST_DATE <= day <= LAST_DATE:
        raise Unreadable(f"outside {FIRST_DATE.isoformat()}..{LAST_DATE.isoformat()}")
    return day


@lru_cache(maxsize=_MEMO, typed=True)
def usable_timestamp(value) -> dt.datetime | None:
    """An FBS timestamp (``as_datetime``) whose day a claim can carry (see ``usable_date``). FBS's
    timestamps are local time without a zone: one with a UTC offset (SQLite keeps any text) is not
    one of them, and is refused rather than converted."""
    at = as_datetime(value)
    if at is not None:
        if at.tzinfo is not None:
            raise Unreadable("a time with a UTC offset, not FBS's local time")
        usable_date(at.date())
    return at


def as_amount(value) -> Decimal | None:
    """An amount the integration itself stored or summed, to the øre (SQLite hands sums back as
    floats). FBS's own amounts are read with ``exact_amount``, which never rounds."""
    if value is None:
        return None
    kind = type(value)
    if (kind is float or kind is int) and value:
        return _amount_of_number(value)
    if isinstance(value, Decimal):
        return value.quantize(CENT)
    return Decimal(str(value)).quantize(CENT)


@lru_cache(maxsize=_MEMO)
def _amount_of_number(value: int | float) -> Decimal:
    """``as_amount`` of a non-zero int or float read back: the same few amounts come back for a
    million rows (a payments run reads each claim's sums), each converted once. Equal non-zero
    ints and floats are the same amount; a zero is not memoised (0.0 and -0.0 are equal but print
    apart), nor a bool (no amount)."""
    return Decimal(str(value)).quantize(CENT)


MAX_AMOUNT = Decimal("9999999999.99")     # NUMERIC(12,2) in FBS, totalDigits 12 in the schema


_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def stored_number(value) -> Decimal | None:
    """A NUMERIC value exactly as either database hands it back, whatever its size or decimals:
    ``Unreadable`` when it is not a finite number. SQLite keeps a NUMERIC value as integer, real or
    text: a real is read by its shortest representation (what was written), text only when it is
    a plain decimal number."""
    if value is None:
        return None
    if isinstance(value, str):
        if not _NUMBER.fullmatch(value):
            raise Unreadable("not a number")
        return Decimal(value)
    if isinstance(value, float):
        if value != value or abs(value) == float("inf"):
            raise Unreadable("not a finite number")
        return Decimal(repr(value))
    if isinstance(value, Decimal | int) and not isinstance(value, bool):
        amount = Decimal(value)
        if not amount.is_finite():
            raise Unreadable("not a finite number")
        return amount
    raise Unreadable(f"a value of type {type(value).__name__}, not a number")


@lru_cache(maxsize=_MEMO, typed=True)
def exact_amount(value) -> Decimal | None:
    """An FBS amount exactly as stored, in kroner and øre; ``Unreadable`` (never rounded, never cut)
    when it is not a number, has more than two decimals, or does not fit NUMERIC(12,2). SQLite
    keeps a NUMERIC value as integer, real or text: a real is read by its shortest representation
    (what was written), so 12.345 stays 12.345 and is refused; text is what SQLite could not read
    as a number ('12,50')."""
    amount = stored_number(value)
    if amount is None:
        return None
    if abs(amount) > MAX_AMOUNT:
        raise Unreadable("larger than 9,999,999,999.99")
    if amount != amount.quantize(CENT, rounding="ROUND_DOWN"):
        raise Unreadable("more than two decimals")
    return amount.quantize(CENT)


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


# Values SQLite binds as they are: most of what a statement binds. Only the others are converted.
_PLAIN = frozenset({str, int, float, type(None), bytes})


def _sqlite_one(params):
    """One statement's bound values as SQLite stores them: the same object when nothing needs
    converting (a look at each value's exact type; a subclass, e.g. a bool, is converted)."""
    plain = _PLAIN
    if isinstance(params, dict):
        for v in params.values():
            if type(v) not in plain:
                return {k: v if type(v) in plain else _sqlite_value(v) for k, v in params.items()}
        return params
    for v in params:
        if type(v) not in plain:
            return tuple(v if type(v) in plain else _sqlite_value(v) for v in params)
    return params


def _as_it_is(value):
    return value


def value_converter(bind: Engine | Connection):
    """``bound_value`` for ``bind`` as a function of the value alone: the database looked at once,
    not for every value of a bulk write."""
    return _sqlite_value if _is_sqlite(bind) else _as_it_is


def bound_value(bind: Engine | Connection, value):
    """``value`` as the database behind ``bind`` is given it: on SQLite what ``_sqlite_parameters``
    would make of it (ISO text, text for an amount, 0/1), elsewhere the value itself. For a value
    many rows of one bulk write share (a timestamp), converted once instead of once per row."""
    return value_converter(bind)(value)


def _sqlite_parameters(conn, cursor, statement, parameters, context, executemany):
    """``before_cursor_execute`` on SQLite engines: every bound value as SQLite stores it, for one
    statement (a tuple or dict of values) or many (a list of them)."""
    if executemany:
        return statement, [_sqlite_one(p) for p in parameters]
    return statement, _sqlite_one(parameters)


def is_timestamp(bind: Engine | Connection, column: str) -> str:
    """A SQL condition: ``column`` (a date or timestamp column) holds a value that compares as one.
    PostgreSQL's typed columns always do. SQLite keeps anything: only ISO text (what ``as_date``
    reads) compares as a date with ISO text; a number, a blob or other text does not, and the
    queries then treat the row as one whose date is unknown rather than as older or newer."""
    if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)?", column):
        raise ValueError("bad column name")
    if not _is_sqlite(bind):
        return "(1 = 1)"
    return (f"(typeof({column}) = 'text' AND {column} GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*' "
            f"AND julianday({column}) IS NOT NULL)")


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


# --- many rows, straight to the driver ------------------------------------------------------------
# SQLAlchemy's executemany works on every row (``text()``'s construct_params; on SQLite
# ``_sqlite_parameters``). A bulk write whose values are already as the database binds them
# (``bound_value`` for the few that are not plain: a timestamp shared by the rows, an amount) can
# skip that: these two hand the rows to the driver as they are. A driver's error is raised as
# SQLAlchemy's (IntegrityError, OperationalError, ...), parameters hidden, as ``conn.execute`` does.

@contextmanager
def _as_sqlalchemy_errors(conn: Connection, statement: str) -> Iterator[None]:
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        raise DBAPIError.instance(statement, None, exc, dbapi.Error, hide_parameters=True,
                                  dialect=conn.dialect) from exc


def execute_rows(conn: Connection, statement: str, rows: list[dict]) -> None:
    """``conn.execute(text(statement), rows)`` (``:name`` parameters, a fixed statement of the
    caller's) in this connection's transaction; on SQLite the rows go to the driver as they are,
    so each value must be one SQLite binds as it is (``bound_value``)."""
    if not rows:
        return
    if not _is_sqlite(conn):
        conn.execute(text(statement), rows)
        return
    with _as_sqlalchemy_errors(conn, statement):
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.executemany(statement, rows)
        finally:
            cursor.close()


def execute_rows_counted(conn: Connection, statement: str, rows: list[dict]) -> int:
    """``execute_rows`` that returns how many rows the statements changed in all (an ``INSERT ...
    ON CONFLICT DO NOTHING`` of many rows: how many were new). On SQLite one executemany straight to
    the driver (its rowcount is the sum), each row's values made as SQLite binds them
    (``_sqlite_parameters``' conversion, per row); elsewhere one statement per row, their counts
    summed (a driver's executemany need not report one)."""
    if not rows:
        return 0
    if not _is_sqlite(conn):
        statement_ = text(statement)
        return sum(conn.execute(statement_, row).rowcount for row in rows)
    with _as_sqlalchemy_errors(conn, statement):
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.executemany(statement, [_sqlite_one(row) for row in rows])
            return cursor.rowcount
        finally:
            cursor.close()


@lru_cache(maxsize=512)
def _in_clause(statement: str, name: str) -> TextClause:
    return in_query(statement, name)


@lru_cache(maxsize=512)
def _in_names(name: str, n: int) -> tuple[str, ...]:
    return tuple(f"{name}__{i}" for i in range(n))


@lru_cache(maxsize=512)
def _in_statement(statement: str, name: str, n: int, positional: bool = False) -> str:
    """``statement`` with its one ``:name`` written out as a list of ``n`` placeholders: named
    (``:name__0, ...``, for ``_in_names``) or positional (``?, ...``)."""
    marker = re.compile(rf":{re.escape(name)}\b")
    if len(marker.findall(statement)) != 1:
        raise ValueError(f"the statement must name :{name} once")
    items = ", ".join("?" * n) if positional else ", ".join(f":{k}" for k in _in_names(name, n))
    return marker.sub(lambda _m: "(" + items + ")", statement)


def select_in(conn: Connection, statement: str, name: str, values: Sequence) -> list:
    """The rows of ``statement`` (``SELECT ... IN :name``, a fixed statement of the caller's with no
    other parameter) for one IN list ``values`` (the caller keeps it short: ``chunked``); none for an
    empty list. On SQLite the list's placeholders are written out once per statement and length and
    the values, keys (text or whole numbers), go to the driver as they are; elsewhere ``in_query``
    as it is."""
    values = tuple(values)
    if not values:
        return []
    if not _is_sqlite(conn):
        return conn.execute(_in_clause(statement, name), {name: list(values)}).all()
    # positional: the driver binds thousands of ``?`` several times faster than as many names
    return conn.exec_driver_sql(_in_statement(statement, name, len(values), positional=True), values).all()


def execute_in(conn: Connection, statement: str, params: dict, name: str, values: Sequence) -> int:
    """``conn.execute(in_query(statement, name), {**params, name: values})`` (``... IN :name``, a
    fixed statement of the caller's, ``values`` one IN list: the caller keeps it short, ``chunked``)
    in this connection's transaction; returns the rows changed. On SQLite the statement goes to the
    driver with the list's placeholders written out (cached per statement and length: SQLAlchemy
    renders an expanding parameter anew on every execution, a cost per value) and every value made
    as SQLite binds it (``_sqlite_parameters``' conversion); elsewhere through SQLAlchemy as it is."""
    values = list(values)
    if not values:
        raise ValueError(f"an empty IN list for :{name}")
    if not _is_sqlite(conn):
        return conn.execute(_in_clause(statement, name), {**params, name: values}).rowcount
    sql = _in_statement(statement, name, len(values))
    bound = dict(zip(_in_names(name, len(values)), values, strict=True))
    bound.update(params)
    bound = _sqlite_one(bound)
    with _as_sqlalchemy_errors(conn, sql):
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql, bound)
            return cursor.rowcount
        finally:
            cursor.close()


def insert_bound_rows(conn: Connection, table: str, columns: Sequence[str], rows: list[Sequence]) -> int:
    """``INSERT INTO table (columns)`` of every row (tuples in ``columns`` order) in this
    connection's transaction: COPY on PostgreSQL (``bulk_insert``), on SQLite one executemany of
    the rows as they are (each value one SQLite binds as it is: ``bound_value``)."""
    if not rows:
        return 0
    _check_identifiers([table, *columns])
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608
    with _as_sqlalchemy_errors(conn, statement):
        if not _is_sqlite(conn):
            return bulk_insert(conn, table, columns, rows)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.executemany(statement, rows)
        finally:
            cursor.close()
    return len(rows)


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
    if not all(re.fullmatch(r"[a-z_][a-z0-9_]*", n) for n in names):   # a letter or _ first, then digits too (file_sha256)
        raise ValueError("bad identifier")


# --- one at a time -----------------------------------------------------------------------------

LOCKS = {"payments": 1590_0001, "sending": 1590_0002}


def lock_part(part: str | None) -> int:
    """The second key of a lock held per part (a municipality's CVR): a stable 31-bit number."""
    if not part:
        return 0
    digest = hashlib.sha256(str(part).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


@contextmanager
def exclusive(engine: Engine, name: str, part: str | None = None) -> Iterator[None]:
    """Hold the named lock of this database while the block runs, waiting for whoever holds it
    (an Airflow task on any worker, the CLI). With ``part`` (a municipality's CVR) the lock is that
    part's alone: two municipalities' senders run side by side, two senders of one municipality
    never interleave. PostgreSQL: a session advisory lock (``pg_advisory_lock(name, part)``), which
    every worker on every machine sees and which the server releases when a killed worker's session
    ends. SQLite (the embedded demo, one machine): an exclusive ``flock`` on a file next to the
    database. Not re-entrant: take it once, at the top."""
    with exclusive_many(engine, name, [part]):
        yield


@contextmanager
def exclusive_many(engine: Engine, name: str, parts) -> Iterator[None]:
    """Hold the named lock of every part (``None``: the whole lock) at once, taken in the given
    order and released in reverse (``exclusive`` is this for one part): what a step that must
    exclude every municipality's step takes. PostgreSQL: all advisory locks in ONE session, so a
    hundred municipalities hold one pooled connection, not a hundred. SQLite: one ``flock`` per part."""
    key = LOCKS[name]
    if _is_sqlite(engine):
        with ExitStack() as stack:
            for part in parts:
                stack.enter_context(_file_lock(engine, name, part))
            yield
        return
    with engine.connect() as conn:
        held: list[int] = []
        try:
            for part in parts:
                conn.execute(text("SELECT pg_advisory_lock(:k, :p)"), {"k": key, "p": lock_part(part)})
                conn.commit()
                held.append(lock_part(part))
            yield
        finally:
            for p in reversed(held):
                conn.execute(text("SELECT pg_advisory_unlock(:k, :p)"), {"k": key, "p": p})
                conn.commit()


@contextmanager
def _file_lock(engine: Engine, name: str, part: str | None) -> Iterator[None]:
    """SQLite's lock of one part: an exclusive ``flock`` on a file next to the database (none for
    a database in memory: one process)."""
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    suffix = f"{name}-{lock_part(part)}" if part else name
    with open(f"{database}.{suffix}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_embedded(url: str | URL) -> bool:
    """True when a database URL is the embedded kind, a file on this machine (SQLite), not a server."""
    return make_url(url).get_backend_name() == "sqlite"


def refresh_planner_statistics(engine: Engine) -> None:
    """Let SQLite's query planner know the tables' sizes (a sampled ``ANALYZE``: milliseconds).
    Without statistics it guesses that an agency holds a handful of liabilities and walks a whole
    agency's index instead of looking up the few thousand changed ones (issue 19). PostgreSQL keeps
    its own statistics (autovacuum): nothing to do there."""
    if engine.dialect.name != "sqlite":
        return
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA analysis_limit=1000")
        conn.exec_driver_sql("ANALYZE")


def local_clock(engine: Engine) -> dt.datetime:
    """The database's own clock, local time without zone, to the second (FBS's change markers are
    compared with it: the machine this runs on may differ)."""
    sql = "SELECT datetime('now', 'localtime')" if engine.dialect.name == "sqlite" else "SELECT LOCALTIMESTAMP"
    with engine.connect() as conn:
        return as_datetime(conn.execute(text(sql)).scalar_one()).replace(microsecond=0)
