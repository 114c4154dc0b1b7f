"""Alarms: the conditions a person must act on, kept in the ledger (table ``alarm``).

A run raises the conditions it sees (``raise_alarms``) and resolves the ones of the same kinds it
no longer sees (``resolve_unseen``); an alarm raised again while open is the same alarm, seen once
more, so the daily digest and the status page say each condition once, not once per hourly run.
Messages are counts and ids: any CPR-shaped number in them is masked on write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import String, bindparam, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from fbs_debitor.core.db import as_datetime, in_query
from fbs_debitor.core.identity import mask_cprs_in

STAFF, OPERATOR = "staff", "operator"

# The kinds the runs raise (the digest and the status page read them):
HELD = "held_agency"                        # STAFF: an agency held whole by its age limit (C3)
REJECTIONS = "rejections"                   # STAFF: claims/changes rejected in the agency's newest run with any
FAILED_AGENCY = "failed_agency"             # OPERATOR: an agency's work failed part-way
UNCONFIRMED = "unconfirmed"                 # OPERATOR: claims/changes unanswered after every retry (an outage)
PAYMENT_DIFFERENCES = "payment_differences"  # OPERATOR: the payments reconciliation found differences
ACCESS = "access_held"                       # OPERATOR: the municipality's Serviceplatformen access does not work
MARKERS_MISSED = "markers_missed"            # OPERATOR: the nightly sweep found changes FBS had not marked (issue 19)
KEY_LENGTH, KIND_LENGTH = 120, 40


@dataclass(frozen=True)
class Alarm:
    kind: str
    audience: str            # STAFF: data in FBS to fix; OPERATOR: the integration could not do its work
    message: str
    agency_id: str | None = None
    # set when read back from the ledger
    first_seen_at: dt.datetime | None = None
    last_seen_at: dt.datetime | None = None
    occurrences: int = 1
    resolved_at: dt.datetime | None = None
    notified_at: dt.datetime | None = None
    first_run_id: str | None = None
    last_run_id: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.agency_id or '*'}"

    def __post_init__(self):
        if self.audience not in (STAFF, OPERATOR):
            raise ValueError(f"alarm audience {self.audience!r}: staff or operator")
        if not self.kind or len(self.kind) > KIND_LENGTH or len(self.key) > KEY_LENGTH:
            raise ValueError(f"alarm kind {self.kind!r} / agency {self.agency_id!r}: too long or empty")

    @property
    def is_new(self) -> bool:
        """Not yet said by a digest."""
        return self.notified_at is None


def _now() -> dt.datetime:
    return dt.datetime.now().replace(microsecond=0)


# A condition seen for the first time: open, seen once, by this run.
_INSERT = ("INSERT INTO alarm (alarm_key, kind, audience, agency_id, message, first_seen_at, last_seen_at, "
           "first_run_id, last_run_id, occurrences) VALUES (:k, :kind, :aud, :ag, :m, :t, :t, :r, :r, 1)")


def _params(alarm: Alarm, at: dt.datetime, run_id: str | None) -> dict:
    """An alarm's values for the statements here; the message CPR-masked and cut to what the
    ledger keeps."""
    return {"k": alarm.key, "kind": alarm.kind, "aud": alarm.audience, "ag": alarm.agency_id,
            "m": mask_cprs_in(alarm.message)[:4000], "t": at, "r": run_id}


def raise_alarms(ledger: Engine, run_id: str | None, alarms: Iterable[Alarm], at: dt.datetime | None = None) -> int:
    """Open each alarm, or count it seen once more when already open (message updated to the
    newest). A resolved alarm raised again is opened anew (first seen now, not yet notified)."""
    at = at or _now()
    n = 0
    with ledger.begin() as conn:
        for a in alarms:
            params = _params(a, at, run_id)
            row = conn.execute(text("SELECT resolved_at, last_run_id FROM alarm WHERE alarm_key = :k"),
                               {"k": a.key}).first()
            if row is None:
                conn.execute(text(_INSERT), params)
            elif row.resolved_at is not None:
                conn.execute(text(
                    "UPDATE alarm SET audience = :aud, agency_id = :ag, message = :m, first_seen_at = :t,"
                    " last_seen_at = :t, first_run_id = :r, last_run_id = :r, occurrences = 1,"
                    " resolved_at = NULL, notified_at = NULL WHERE alarm_key = :k"), params)
            else:
                # the same run raising it again (a retried task) does not count it twice
                again = 0 if (run_id is not None and row.last_run_id == run_id) else 1
                conn.execute(text(
                    "UPDATE alarm SET audience = :aud, message = :m, last_seen_at = :t, last_run_id = :r,"
                    " occurrences = occurrences + :again WHERE alarm_key = :k"), {**params, "again": again})
            n += 1
    return n


def resolve_unseen(ledger: Engine, kinds: Iterable[str], seen: Iterable[Alarm], at: dt.datetime | None = None,
                   agencies: Iterable[str] | None = None) -> list[str]:
    """Resolve the open alarms of ``kinds`` that are not in ``seen`` (optionally only those of
    ``agencies``: the ones the run looked at). Returns the keys resolved."""
    kinds, keys = list(kinds), {a.key for a in seen}
    if not kinds:
        return []
    query = "SELECT alarm_key, agency_id FROM alarm WHERE resolved_at IS NULL AND kind IN :kinds"
    with ledger.begin() as conn:
        rows = conn.execute(in_query(query, "kinds"), {"kinds": kinds}).all()
        scope = None if agencies is None else set(agencies)
        gone = [r.alarm_key for r in rows if r.alarm_key not in keys and (scope is None or r.agency_id in scope)]
        if gone:
            conn.execute(in_query("UPDATE alarm SET resolved_at = :t WHERE alarm_key IN :keys", "keys"),
                         {"t": at or _now(), "keys": gone})
    return gone


def _from_row(r) -> Alarm:
    return Alarm(kind=r.kind, audience=r.audience, message=r.message, agency_id=r.agency_id,
                 first_seen_at=as_datetime(r.first_seen_at), last_seen_at=as_datetime(r.last_seen_at),
                 occurrences=int(r.occurrences), resolved_at=as_datetime(r.resolved_at),
                 notified_at=as_datetime(r.notified_at), first_run_id=r.first_run_id, last_run_id=r.last_run_id)


_SELECT = ("SELECT kind, audience, message, agency_id, first_seen_at, last_seen_at, occurrences, resolved_at, "
           "notified_at, first_run_id, last_run_id FROM alarm ")
_OPEN = _SELECT + ("WHERE resolved_at IS NULL AND (:ag IS NULL OR agency_id = :ag) "
                   "ORDER BY CASE audience WHEN 'operator' THEN 0 ELSE 1 END, agency_id, kind")
_RESOLVED = _SELECT + "WHERE resolved_at >= :s ORDER BY resolved_at"


def open_alarms(ledger: Engine, agency_id: str | None = None) -> list[Alarm]:
    """Open alarms, operator ones first, then by agency and kind."""
    with ledger.connect() as conn:
        rows = conn.execute(text(_OPEN).bindparams(bindparam("ag", type_=String)), {"ag": agency_id}).all()
    return [_from_row(r) for r in rows]


def resolved_since(ledger: Engine, since: dt.datetime) -> list[Alarm]:
    with ledger.connect() as conn:
        rows = conn.execute(text(_RESOLVED), {"s": since}).all()
    return [_from_row(r) for r in rows]


def mark_notified(ledger: Engine, alarms: Iterable[Alarm], at: dt.datetime | None = None) -> None:
    keys = [a.key for a in alarms]
    if keys:
        with ledger.begin() as conn:
            conn.execute(in_query("UPDATE alarm SET notified_at = :t WHERE alarm_key IN :keys", "keys"),
                         {"t": at or _now(), "keys": keys})


def observe(ledger: Engine, run_id: str | None, kind: str, audience: str, found: dict[str | None, str],
            at: dt.datetime | None = None, agencies: Iterable[str] | None = None) -> list[str]:
    """One run's look at one condition: raise an alarm of ``kind`` per agency in ``found`` (agency ->
    message; None for the whole deployment) and resolve the open ones of ``kind`` it no longer saw
    (of ``agencies`` only, when given: the ones the run looked at). Returns the keys resolved."""
    seen = [Alarm(kind=kind, audience=audience, message=m, agency_id=a) for a, m in sorted(
        found.items(), key=lambda item: item[0] or "")]
    raise_alarms(ledger, run_id, seen, at)
    return resolve_unseen(ledger, [kind], seen, at, agencies)


def claim_for_run(ledger: Engine, alarm: Alarm, run_id: str, at: dt.datetime | None = None) -> bool:
    """Raise ``alarm`` for ``run_id`` and say whether this call is the first to do so for that run:
    what lets several callbacks of one failed run (a task's and the run's) send one alert. Atomic
    on both databases (a conditional UPDATE, or the INSERT of the primary key)."""
    at = at or _now()
    params = _params(alarm, at, run_id)
    try:
        with ledger.begin() as conn:
            done = conn.execute(text(
                "UPDATE alarm SET message = :m, last_seen_at = :t, last_run_id = :r, audience = :aud,"
                " occurrences = CASE WHEN resolved_at IS NULL THEN occurrences + 1 ELSE 1 END,"
                " first_seen_at = CASE WHEN resolved_at IS NULL THEN first_seen_at ELSE :t END,"
                " first_run_id = CASE WHEN resolved_at IS NULL THEN first_run_id ELSE :r END,"
                " notified_at = CASE WHEN resolved_at IS NULL THEN notified_at ELSE NULL END,"
                " resolved_at = NULL"
                " WHERE alarm_key = :k AND (last_run_id IS NULL OR last_run_id <> :r)"), params).rowcount
            if done:
                return True
            if conn.execute(text("SELECT 1 FROM alarm WHERE alarm_key = :k"), {"k": alarm.key}).first():
                return False                         # this run already raised it
            conn.execute(text(_INSERT), params)
        return True
    except IntegrityError:                           # another callback of the same run inserted it first
        return False


def resolved_unsaid(ledger: Engine) -> list[Alarm]:
    """Resolved alarms no digest has said resolved yet (never notified, or notified before they
    were resolved)."""
    with ledger.connect() as conn:
        rows = conn.execute(text(_SELECT + "WHERE resolved_at IS NOT NULL AND (notified_at IS NULL OR "
                                           "notified_at < resolved_at) ORDER BY resolved_at")).all()
    return [_from_row(r) for r in rows]
