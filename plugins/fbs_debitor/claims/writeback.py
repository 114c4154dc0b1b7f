"""Writing back to FBS: replacement CPR numbers (I1) and staff tasks (M1).

Both writes are idempotent. A replacement CPR is only ever written where the patron has none, so a
number once assigned (and sent) never changes; a task is keyed by what it is about, so raising it
again updates nothing and duplicates nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from fbs_debitor.claims.model import StaffTask
from fbs_debitor.core.db import execute_rows_counted
from fbs_debitor.core.identity import mask_cpr


class ReplacementCprConflict(RuntimeError):
    """A new replacement CPR is already another patron's (the unique index said no); masked."""


def persist_replacement_cprs(conn: Connection, numbers: Mapping[int, str]) -> dict[int, str]:
    """Store new replacement CPRs; returns what each patron now has (an existing number wins).

    A collision (another writer got there first) raises ReplacementCprConflict naming the patrons
    and the masked numbers only: the database's own message quotes the number, so it is dropped
    from the traceback."""
    if not numbers:
        return {}
    try:
        conn.execute(text("UPDATE patron SET replacement_cpr = :r WHERE patron_id = :p AND replacement_cpr IS NULL"),
                     [{"p": p, "r": r} for p, r in numbers.items()])
    except IntegrityError:
        masked = ", ".join(f"patron {p}: {mask_cpr(r)}" for p, r in sorted(numbers.items()))
        raise ReplacementCprConflict(f"a replacement CPR to store is already in use (I1); nothing stored "
                                     f"({masked}); the next run assigns new numbers") from None
    ids = list(numbers)
    stored: dict[int, str] = {}
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        params = {f"p{i}": p for i, p in enumerate(part)}
        rows = conn.execute(text(f"SELECT patron_id, replacement_cpr FROM patron WHERE patron_id IN "  # noqa: S608 - placeholders only
                                 f"({', '.join(':' + k for k in params)})"), params)
        stored.update({r.patron_id: r.replacement_cpr for r in rows})
    return stored


def raise_tasks(conn: Connection, tasks: Iterable[StaffTask], at: dt.datetime | None = None) -> int:
    """Insert tasks that do not exist yet; returns how many were new (one bulk write, ``execute_rows_counted``)."""
    at = at or dt.datetime.now().replace(microsecond=0)
    return execute_rows_counted(conn, _INSERT_TASK, [
        {"task_id": task.task_id, "agency_id": task.agency_id, "branch_id": task.branch_id,
         "patron_id": task.patron_id, "liability_id": task.liability_id, "kind": task.kind,
         "message": task.message, "created_at": at} for task in tasks])


_INSERT_TASK = ("INSERT INTO task (task_id, agency_id, branch_id, patron_id, liability_id, kind, message, created_at) "
                "VALUES (:task_id, :agency_id, :branch_id, :patron_id, :liability_id, :kind, :message, :created_at) "
                "ON CONFLICT (task_id) DO NOTHING")
