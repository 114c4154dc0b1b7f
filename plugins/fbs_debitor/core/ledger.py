"""Reading and writing the ledger: runs, their counts, findings, and what the integration changed in FBS.

Every write is keyed so that repeating it (a retried Airflow task, a rerun after a crash) leaves
the same rows: runs by their id, counts by (run, agency, category, rule), findings by their key.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from fbs_debitor.core import db
from fbs_debitor.core.db import as_datetime, chunked, in_query, sql_file
from fbs_debitor.core.identity import mask_cprs_in


def now() -> dt.datetime:
    return dt.datetime.now().replace(microsecond=0)


# --- runs --------------------------------------------------------------------------------------

def start_run(ledger: Engine, kind: str, *, airflow_dag_id: str | None = None, airflow_run_id: str | None = None,
              interval: tuple[dt.datetime | None, dt.datetime | None] = (None, None),
              run_id: str | None = None) -> str:
    """Record a run as started and return its id. Runs left 'running' by a killed worker are
    closed as failed first, so the ledger never shows two live runs of the same kind."""
    run_id = run_id or str(uuid.uuid4())
    started = now()
    with ledger.begin() as conn:
        conn.execute(text("UPDATE run SET status = 'failed', finished_at = :t, "
                          "error = 'abandoned: a later run started while this one was still marked running' "
                          "WHERE kind = :k AND status = 'running' AND run_id <> :r"),
                     {"t": started, "k": kind, "r": run_id})
        exists = conn.execute(text("SELECT 1 FROM run WHERE run_id = :r"), {"r": run_id}).first()
        if exists:
            conn.execute(text("UPDATE run SET status = 'running', finished_at = NULL, error = NULL WHERE run_id = :r"),
                         {"r": run_id})
        else:
            conn.execute(
                text("INSERT INTO run (run_id, kind, airflow_dag_id, airflow_run_id, data_interval_start, "
                     "data_interval_end, started_at, status) VALUES (:r, :k, :d, :a, :s, :e, :t, 'running')"),
                {"r": run_id, "k": kind, "d": airflow_dag_id, "a": airflow_run_id,
                 "s": _naive(interval[0]), "e": _naive(interval[1]),
                 "t": started})
    return run_id


def _naive(value: dt.datetime | None) -> dt.datetime | None:
    """Interval bounds are stored as naive UTC."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def finish_run(ledger: Engine, run_id: str, status: str, error: str | None = None) -> None:
    if status not in ("success", "failed"):
        raise ValueError(status)
    with ledger.begin() as conn:
        conn.execute(text("UPDATE run SET status = :s, finished_at = :t, error = :e WHERE run_id = :r"),
                     {"s": status, "t": now(),
                      "e": mask_cprs_in(error)[:4000] if error else None, "r": run_id})


RULE_LENGTH = 30   # run_count.rule


def record_counts(ledger: Engine, run_id: str, counts: Counter, categories: Iterable[str],
                  agencies: Collection[str] | None = None) -> None:
    """Replace the run's counts in these categories (a retried task writes the same run again, not
    twice; the steps of a run each own their categories). With ``agencies`` (a municipality's task
    of a run whose steps run per municipality) only those agencies' counts are replaced: the other
    municipalities' tasks of the same run write theirs beside them."""
    categories = sorted(set(categories) | {c for _, c, _ in counts})
    rows: Counter = Counter()
    for (a, c, u), n in counts.items():   # a rule is at most 30 characters (the column): e.g. a long exception name
        if agencies is not None and a not in agencies:
            raise ValueError(f"count for agency {a}, which is not one of this task's agencies")
        rows[(a, c, str(u)[:RULE_LENGTH])] += n
    with ledger.begin() as conn:
        if agencies is None:
            conn.execute(in_query("DELETE FROM run_count WHERE run_id = :r AND category IN :cs", "cs"),
                         {"r": run_id, "cs": categories})
        elif agencies:
            conn.execute(in_query("DELETE FROM run_count WHERE run_id = :r AND category IN :cs AND agency_id IN :as",
                                  "cs", "as"),
                         {"r": run_id, "cs": categories, "as": sorted(agencies)})
        if rows:
            conn.execute(text("INSERT INTO run_count (run_id, agency_id, category, rule, n) "
                              "VALUES (:r, :a, :c, :u, :n)"),
                         [{"r": run_id, "a": a, "c": c, "u": u, "n": n} for (a, c, u), n in sorted(rows.items())])


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    kind: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    error: str | None
    airflow_run_id: str | None


def get_run(ledger: Engine, run_id: str | None = None, kind: str | None = None) -> RunInfo | None:
    """A run by id, or the newest run (of ``kind`` when given)."""
    sql = "SELECT run_id, kind, status, started_at, finished_at, error, airflow_run_id FROM run"
    params: dict = {}
    if run_id:
        sql += " WHERE run_id = :r"
        params["r"] = run_id
    elif kind:
        sql += " WHERE kind = :k"
        params["k"] = kind
    sql += " ORDER BY started_at DESC, run_id DESC LIMIT 1"
    with ledger.connect() as conn:
        row = conn.execute(text(sql), params).first()
    if row is None:
        return None
    return RunInfo(row.run_id, row.kind, row.status, as_datetime(row.started_at), as_datetime(row.finished_at),
                   row.error, row.airflow_run_id)


# (agency, ASSESSED, "-") = 1: the run assessed this agency's liabilities to the end (its unit's
# sending task got that far). A marker, not a count of liabilities: run_counts leaves it out.
ASSESSED = "assessed"


def run_counts(ledger: Engine, run_id: str) -> Counter:
    """The run's counts (agency, category, rule) -> n (without the ``ASSESSED`` markers)."""
    with ledger.connect() as conn:
        rows = conn.execute(text("SELECT agency_id, category, rule, n FROM run_count WHERE run_id = :r "
                                 "AND category <> :m"), {"r": run_id, "m": ASSESSED}).all()
    return Counter({(r.agency_id, r.category, r.rule): int(r.n) for r in rows})


def mark_assessed(ledger: Engine, run_id: str, agencies: Iterable[str]) -> None:
    """Record that this run assessed these agencies to the end (a retry writes the same again)."""
    agencies = sorted(set(agencies))
    record_counts(ledger, run_id, Counter({(a, ASSESSED, "-"): 1 for a in agencies}), [ASSESSED], agencies=agencies)


def assessed_agencies(ledger: Engine, run_id: str) -> set[str]:
    """The agencies this run assessed to the end (``mark_assessed``)."""
    with ledger.connect() as conn:
        return {str(r[0]) for r in conn.execute(text(
            "SELECT agency_id FROM run_count WHERE run_id = :r AND category = :m AND n > 0"),
            {"r": run_id, "m": ASSESSED})}


# --- findings ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    check_code: str
    rule: str
    severity: str          # blocks_liability | blocks_agency | warning
    agency_id: str
    message: str           # never a full CPR number
    subject: str           # what the finding is about, e.g. 'L123' or 'P45' or 'A715100'
    branch_id: str | None = None
    patron_id: int | None = None
    liability_id: int | None = None

    @property
    def key(self) -> str:
        return f"{self.check_code}:{self.subject}"


_UPSERT_FINDING = text(
    "INSERT INTO finding (finding_key, check_code, rule, severity, agency_id, branch_id, patron_id, liability_id, "
    "message, first_seen_at, last_seen_at, resolved_at, first_run_id, last_run_id) "
    "VALUES (:k, :c, :u, :s, :a, :b, :p, :l, :m, :t, :t, NULL, :r, :r) "
    "ON CONFLICT (finding_key) DO UPDATE SET last_seen_at = excluded.last_seen_at, "
    "last_run_id = excluded.last_run_id, resolved_at = NULL, resolution = NULL, message = excluded.message, "
    "severity = excluded.severity, branch_id = excluded.branch_id, patron_id = excluded.patron_id"
)


def upsert_findings(ledger: Engine, run_id: str, findings: Iterable[Finding], seen_at: dt.datetime,
                    batch: int = 5000) -> int:
    """Record findings seen in this run: new ones get first_seen, known ones a new last_seen,
    and a resolved one that is back is open again."""
    t = seen_at
    n = 0
    for part in chunked(findings, batch):
        with ledger.begin() as conn:
            conn.execute(_UPSERT_FINDING, [
                {"k": f.key, "c": f.check_code, "u": f.rule, "s": f.severity, "a": f.agency_id, "b": f.branch_id,
                 "p": f.patron_id, "l": f.liability_id, "m": f.message, "t": t, "r": run_id} for f in part])
        n += len(part)
    return n


_UNSEEN = ("SELECT finding_key, check_code, agency_id, patron_id, liability_id FROM finding "
           "WHERE resolved_at IS NULL AND check_code IN :codes AND (last_run_id IS NULL OR last_run_id <> :r)")


def unseen_findings(ledger: Engine, run_id: str, check_codes: Iterable[str],
                    skip_agencies: Iterable[str] = (), agency_id: str | None = None, *,
                    liabilities: Iterable[int] | None = None, whole: Iterable[str] = ()) -> list:
    """Open findings of these checks that this run did not see again (finding_key, check_code,
    agency_id, patron_id, liability_id), leaving out the agencies named (e.g. held: nothing was checked there); of one
    agency only when ``agency_id`` is given (a backfill month). ``liabilities`` (the incremental
    run's delta, issue 19): only the findings about those liabilities, every finding of the agencies
    in ``whole``, and the agency-level findings; the others were not looked at, so not seen proves
    nothing about them (and reading them would cost what is open, not what changed)."""
    codes = sorted(set(check_codes))
    if not codes:
        return []
    skip = set(skip_agencies)
    if liabilities is None:
        query = in_query(_UNSEEN + " AND (CAST(:a AS VARCHAR(20)) IS NULL OR agency_id = :a)", "codes")
        with ledger.connect() as conn:
            return [r for r in conn.execute(query, {"codes": codes, "r": run_id, "a": agency_id})
                    if r.agency_id not in skip]
    whole = sorted(set(whole))
    found: dict[str, object] = {}
    with ledger.connect() as conn:
        agency_level = in_query(_UNSEEN + " AND liability_id IS NULL", "codes")
        found.update({r.finding_key: r for r in conn.execute(agency_level, {"codes": codes, "r": run_id})})
        if whole:
            of_agencies = in_query(_UNSEEN + " AND agency_id IN :agencies", "codes", "agencies")
            found.update({r.finding_key: r for r in conn.execute(of_agencies, {"codes": codes, "r": run_id,
                                                                              "agencies": whole})})
        of_liabilities = in_query(_UNSEEN + " AND liability_id IN :ids", "codes", "ids")
        for part in chunked(sorted({int(i) for i in liabilities}), 5000):
            found.update({r.finding_key: r for r in conn.execute(of_liabilities, {"codes": codes, "r": run_id,
                                                                                 "ids": part})})
    return [r for r in found.values() if r.agency_id not in skip and (agency_id is None or r.agency_id == agency_id)]


# Why a finding was resolved (finding.resolution; NULL, from before 0002, reads as FIXED).
FIXED = "fixed"               # the data was corrected in FBS: what staff fixed
INTEGRATION = "integration"   # the integration changed the data itself (a replacement CPR it assigned, I1)
LEFT_BATCH = "left_batch"     # the liability no longer waits to go (sent, closed, ...): no longer in scope
RESOLUTIONS = (FIXED, INTEGRATION, LEFT_BATCH)


def resolve_findings(ledger: Engine, keys: Iterable[str], resolution: str, resolved_at: dt.datetime,
                     batch: int = 5000) -> int:
    """Mark findings resolved, saying why (one of ``RESOLUTIONS``)."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution {resolution!r}: one of {', '.join(RESOLUTIONS)}")
    update = in_query("UPDATE finding SET resolved_at = :t, resolution = :why WHERE resolved_at IS NULL "
                      "AND finding_key IN :keys", "keys")
    n = 0
    t = resolved_at
    for part in chunked(keys, batch):
        with ledger.begin() as conn:
            n += conn.execute(update, {"t": t, "why": resolution, "keys": part}).rowcount
    return n


def open_findings(ledger: Engine, agency_id: str | None = None) -> list:
    sql = ("SELECT finding_key, check_code, rule, severity, agency_id, branch_id, patron_id, liability_id, message, "
           "first_seen_at, last_seen_at FROM finding WHERE resolved_at IS NULL")
    params = {}
    if agency_id:
        sql += " AND agency_id = :a"
        params["a"] = agency_id
    with ledger.connect() as conn:
        return conn.execute(text(sql + " ORDER BY first_seen_at, finding_key"), params).all()


# --- what the integration changed in FBS ----------------------------------------------------------

@dataclass(frozen=True)
class ReplacementCprAssigned:
    """The integration gave ``patron_id`` a replacement CPR (I1), written to FBS with the claim of
    ``liability_id``. The number itself is never in the ledger."""
    patron_id: int
    agency_id: str
    liability_id: int


def record_replacement_cprs(ledger: Engine, run_id: str, assigned: Iterable[ReplacementCprAssigned],
                            at: dt.datetime | None = None) -> int:
    """Remember the patrons the integration gave a replacement CPR in this run (so the finding that
    went away because of it is resolved as the integration's doing, not staff's), with an event on
    the liability's trail (M2). Keyed by patron: recording it again updates, never doubles."""
    rows = list(assigned)
    if not rows:
        return 0
    at = at or now()
    with ledger.begin() as conn:
        conn.execute(text(
            "INSERT INTO replacement_cpr_assigned (patron_id, agency_id, liability_id, run_id, assigned_at) "
            "VALUES (:p, :a, :l, :r, :t) ON CONFLICT (patron_id) DO UPDATE SET agency_id = excluded.agency_id, "
            "liability_id = excluded.liability_id, run_id = excluded.run_id, assigned_at = excluded.assigned_at"),
            [{"p": r.patron_id, "a": r.agency_id, "l": r.liability_id, "r": run_id, "t": at} for r in rows])
        add_events(conn, [(r.liability_id, "replacement_cpr_assigned", None,
                           f"patron {r.patron_id} had no CPR number: the integration gave them a replacement CPR "
                           "and wrote it to FBS (I1)") for r in rows], run_id, at)
    return len(rows)


def replacement_cpr_patrons(ledger: Engine, patron_ids: Iterable[int]) -> set[int]:
    """Those of these patrons the integration gave a replacement CPR."""
    ids = sorted({int(p) for p in patron_ids})
    found: set[int] = set()
    query = in_query("SELECT patron_id FROM replacement_cpr_assigned WHERE patron_id IN :ids", "ids")
    with ledger.connect() as conn:
        for part in chunked(ids, 5000):
            found.update(int(r[0]) for r in conn.execute(query, {"ids": part}))
    return found


# --- the audit trail (M2) and a claim's settlement ------------------------------------------------

def ordered_id(ns: int, i: int) -> str:
    """A UUID (version 8, RFC 9562) whose first 48 bits are the milliseconds of ``ns`` and whose
    next 12 bits ``i`` (the row's place in its call), the rest random: ids written together are
    neighbours in the event table's key index, where uuid4's scattered a million rows' inserts over
    its pages. Unique as uuid4 is for a call's first 4,096 rows, by 62 random bits past them."""
    raw = ((ns // 1_000_000) & (2**48 - 1)) << 80 | 0x8 << 76 | (i & 0xFFF) << 64 | 0b10 << 62 \
        | int.from_bytes(os.urandom(8)) >> 2
    return str(uuid.UUID(int=raw))


def ordered_ids(ns: int, n: int) -> list[str]:
    """``ordered_id(ns, i)`` for i in 0..n-1, the same layout (version 8, variant 10, 62 random
    bits), made as text in one go: a million events' ids in about a second less."""
    ms = f"{(ns // 1_000_000) & (2**48 - 1):012x}"
    head = f"{ms[:8]}-{ms[8:]}-8"
    rnd = os.urandom(8 * n).hex()
    variant = "89ab89ab89ab89ab"       # the top two bits of the low half are 10: 8, 9, a or b
    out = []
    for i in range(n):
        low = rnd[16 * i:16 * i + 16]
        out.append(f"{head}{i & 0xFFF:03x}-{variant[int(low[0], 16)]}{low[1:4]}-{low[4:]}")
    return out


# --- many rows at once -----------------------------------------------------------------------------
#
# SQLAlchemy's executemany converts every parameter of every row (``text()``'s construct_params, and
# on SQLite ``db._sqlite_parameters``): for a million movements and their events that was most of
# the payments run's CPU. These two send the rows straight to the driver: on SQLite as SQLite stores
# them (the same representation ``db`` gives every bound value), on PostgreSQL by COPY
# (``db.bulk_insert``) or SQLAlchemy's executemany. A driver's error is raised as SQLAlchemy's
# (IntegrityError, OperationalError, DataError, ...), as ``conn.execute`` raises it, so callers
# tell a conflict, a value the ledger cannot hold and an unreachable database apart as before.

def _sqlite_rows(rows: list[Sequence]) -> list[tuple]:
    """The rows with every value as SQLite stores it (``db._sqlite_one``, row by row), or as they
    are when every column holds only values SQLite binds as they are (text, numbers, NULL): a look
    at each column's types, no Python step per value."""
    if all(set(map(type, col)) <= db._PLAIN for col in zip(*rows, strict=True)):  # noqa: SLF001 - db's own
        return [tuple(r) for r in rows]
    return [db._sqlite_one(tuple(r)) for r in rows]  # noqa: SLF001 - db's own representation


def sql_value(conn: Connection):
    """The function that gives a value as this connection's database is sent it by ``insert_rows``
    and ``execute_many`` (``db.bound_value`` for this connection), for a caller that converts a
    value once and uses it in many rows."""
    return db.value_converter(conn)


def insert_rows(conn: Connection, table: str, columns: Sequence[str], rows: list[Sequence]) -> int:
    """``INSERT INTO table (columns)`` of every row (tuples in ``columns`` order, any values) in
    this connection's transaction, in one go (``db.insert_bound_rows``: SQLite's executemany,
    PostgreSQL's COPY), the values converted column by column only where they need it."""
    if not rows:
        return 0
    return db.insert_bound_rows(conn, table, columns, _sqlite_rows(rows) if db.embedded(conn) else rows)


def execute_many(conn: Connection, statement: str, params: list[dict], *, bound: bool = False) -> None:
    """``conn.execute(text(statement), params)`` for many parameter sets (``:name`` parameters,
    a fixed statement of the caller's, any values), on SQLite without SQLAlchemy's per-row work
    (``db.execute_rows``). ``bound``: the caller gave every value as the database binds it
    (``sql_value``), so none is looked at again."""
    if db.embedded(conn) and not bound:
        params = [db._sqlite_one(p) for p in params]  # noqa: SLF001 - db's own representation
    db.execute_rows(conn, statement, params)


_EVENT_COLUMNS = ("event_id", "liability_id", "occurred_at", "kind", "message_key", "run_id", "detail", "seq")


def add_events(conn: Connection, rows: Iterable[tuple[int, str, str | None, str | None]], run_id: str,
               at: dt.datetime) -> None:
    """Append to the audit trail (M2). ``seq`` orders events within the same second (nanoseconds
    since the epoch when written, plus the row's place in the call). One bulk insert
    (``insert_rows``) however many events."""
    rows = list(rows)
    if not rows:
        return
    base = time.time_ns()
    ids = ordered_ids(base, len(rows))
    t = sql_value(conn)(at)                    # once, not per row
    insert_rows(conn, "event", _EVENT_COLUMNS,
                [(ids[i], lid, t, kind, key, run_id, detail, base + i) for i, (lid, kind, key, detail) in enumerate(rows)])


def update_settlement(conn: Connection, liability_ids: list[int]) -> None:
    """Balance and settlement of these claims again (``claim_settlement.sql``)."""
    statement = in_query(sql_file("queries/claim_settlement.sql"), "ids")
    for part in chunked(liability_ids, 2000):
        conn.execute(statement, {"ids": part})
