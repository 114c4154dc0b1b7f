"""The audit trail of one liability (M2): what happened, when, in which message, with which answer.

``python -m fbs_debitor history LIABILITY_ID`` prints it as one readable timeline, from the ledger
(events, messages and their answers, findings, the payment movements as they arrived:
``core.trail``) and FBS (the liability now, staff tasks, payments).
Every line goes through the CPR mask: the ledger never holds a full CPR number, and neither does
this output. A liability id no database can hold (beyond BIGINT) is known nowhere; FBS values that
cannot be read (an amount as text, a date that is not one) are shown as FBS holds them, quoted,
instead of failing the history.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import text

from fbs_debitor.core import ledger, trail
from fbs_debitor.core.db import Unreadable, as_datetime, exact_amount, shown
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.core.stores import Stores


@dataclass(frozen=True)
class Entry:
    at: dt.datetime
    order: int
    source: str          # ledger | fbs
    what: str
    message_key: str | None
    detail: str


_FORDRING_ID = re.compile(r"FBS-\d+-\d+(?:-\d+)?")
_RESOLUTION_SHOWN = {ledger.FIXED: "fixed in FBS", ledger.INTEGRATION: "resolved by the integration",
                     ledger.LEFT_BATCH: "no longer in scope"}


def mask(text_: str) -> str:
    """Every CPR-shaped number masked, except inside the integration's own FordringIDs
    (``FBS-<agency>-<liability>``, which an agency and a four-digit liability id can make look like
    ``DDMMYY-SSSS``)."""
    parts = _FORDRING_ID.split(text_)
    ids = _FORDRING_ID.findall(text_)
    return "".join(mask_cprs_in(part) + (ids[i] if i < len(ids) else "") for i, part in enumerate(parts))


# A liability id is a BIGINT in both databases.
ID_MIN, ID_MAX = -(2 ** 63), 2 ** 63 - 1


def _date_time(value) -> dt.datetime:
    """For ordering the timeline: the moment, or the earliest one when it cannot be read."""
    try:
        return as_datetime(value) or dt.datetime.min
    except Unreadable:
        return dt.datetime.min


def _when(value, fmt: str) -> str:
    """A timestamp for a line: formatted, or as FBS holds it (quoted) when it cannot be read."""
    try:
        at = as_datetime(value)
    except Unreadable:
        return f"{shown(value)} (unreadable)"
    return at.strftime(fmt) if at is not None else "?"


def _money(value) -> str:
    """An amount for a line: exact, or as FBS holds it (quoted) when it cannot be read exactly."""
    try:
        amount = exact_amount(value)
    except Unreadable:
        return f"{shown(value)} (unreadable)"
    return str(amount) if amount is not None else "?"


def entries(stores: Stores, liability_id: int) -> list[Entry]:
    """Everything known about the liability, oldest first."""
    out: list[Entry] = []
    with stores.ledger.connect() as conn:
        for r in conn.execute(text("SELECT occurred_at, seq, kind, message_key, detail FROM event "
                                   "WHERE liability_id = :l"), {"l": liability_id}):
            out.append(Entry(_date_time(r.occurred_at), r.seq or 0, "ledger", r.kind, r.message_key, r.detail or ""))
        for a in trail.arrivals(conn, liability_id):       # payment movements: their rows are their entries
            out.append(Entry(a.at or dt.datetime.min, a.seq, "ledger", a.kind, None, a.detail))
        for r in conn.execute(text("SELECT first_seen_at, resolved_at, rule, check_code, message, resolution "
                                   "FROM finding WHERE liability_id = :l"), {"l": liability_id}):
            out.append(Entry(_date_time(r.first_seen_at), 0, "ledger", f"finding {r.rule}", None,
                             f"{r.check_code}: {r.message}"))
            if r.resolved_at is not None:
                out.append(Entry(_date_time(r.resolved_at), 0, "ledger", f"finding {r.rule} resolved", None,
                                 _RESOLUTION_SHOWN.get(r.resolution or ledger.FIXED, r.resolution)))
    with stores.fbs.connect() as conn:
        for r in conn.execute(text("SELECT task_id, kind, message, created_at, resolved_at FROM task "
                                   "WHERE liability_id = :l"), {"l": liability_id}):
            out.append(Entry(_date_time(r.created_at), 0, "fbs", f"task {r.kind}", None,
                             f"{r.task_id}: {r.message}"))
        for r in conn.execute(text("SELECT payment_id, kind, amount, booked_on, source_ref FROM payment "
                                   "WHERE liability_id = :l"), {"l": liability_id}):
            out.append(Entry(_date_time(r.booked_on), 0, "fbs", f"payment {r.kind}", None,
                             f"{_money(r.amount)} DKK ({r.payment_id}{', ' + r.source_ref if r.source_ref else ''})"))
    return sorted(out, key=lambda e: (e.at, e.order))


def format_history(stores: Stores, liability_id: int, width: int = 160) -> str | None:
    """The readable timeline, or None when neither FBS nor the ledger knows the liability (an id
    beyond what a BIGINT holds is known by neither, and is not looked up)."""
    if not ID_MIN <= liability_id <= ID_MAX:
        return None
    with stores.fbs.connect() as conn:
        now = conn.execute(text("SELECT agency_id, kind, number, amount, status, created_at, refund_requested_at "
                                "FROM liability WHERE liability_id = :l"), {"l": liability_id}).first()
    with stores.ledger.connect() as conn:
        claim = conn.execute(text("SELECT fordring_id, generation, state, debtor_amount, debtor_status "
                                  "FROM claim WHERE liability_id = :l"), {"l": liability_id}).first()
        box = conn.execute(text("SELECT message_key, version, operation, change_kind, fordring_id, amount, state, "
                                "attempts, debtor_ref, error_code, last_error, sent_at, answered_at FROM outbox "
                                "WHERE liability_id = :l ORDER BY version"), {"l": liability_id}).all()
    timeline = entries(stores, liability_id)
    if now is None and claim is None and not timeline:
        return None
    lines = [f"Liability {liability_id}"]
    if now is not None:
        lines.append(f"  FBS now:       {now.kind} {now.number}, agency {now.agency_id}, {_money(now.amount)} DKK, "
                     f"status {now.status}, created {_when(now.created_at, '%Y-%m-%d %H:%M')}"
                     + (f", marked for repayment {_when(now.refund_requested_at, '%Y-%m-%d')}"
                        if now.refund_requested_at else ""))
    else:
        lines.append("  FBS now:       not in FBS")
    if claim is not None:
        lines.append(f"  debtor system: claim {claim.fordring_id} (generation {claim.generation}), creation "
                     f"{claim.state}; told {_money(claim.debtor_amount)}"
                     f" DKK, {claim.debtor_status or '?'}")
    else:
        lines.append("  debtor system: never sent")
    if box:
        lines += ["", "Messages (AendringID / key, oldest first):"]
        for m in box:
            answer = m.state + (f" {m.debtor_ref}" if m.debtor_ref and m.state == "accepted" else "")
            if m.state == "rejected" or m.error_code:
                answer += f" {m.error_code or ''}: {m.last_error or ''}"
            amount = f" {_money(m.amount)} DKK" if m.amount is not None else ""
            lines.append(f"  {m.message_key:<14} {m.operation:<19} {m.change_kind or 'create':<16} {m.fordring_id}"
                         f"{amount}; {answer.strip()}; attempts {m.attempts}"
                         + (f", sent {_when(m.sent_at, '%Y-%m-%d %H:%M:%S')}" if m.sent_at else "")
                         + (f", answered {_when(m.answered_at, '%Y-%m-%d %H:%M:%S')}" if m.answered_at else ""))
    lines += ["", "Timeline:"]
    for e in timeline:
        key = f" [{e.message_key}]" if e.message_key else ""
        line = f"  {e.at:%Y-%m-%d %H:%M:%S}  {e.source:<6} {e.what:<30}{key} {e.detail}"
        lines.append(line if len(line) <= width else line[:width - 1] + "…")
    return "\n".join(mask(line) for line in lines)
