"""A payment movement in the audit trail of its liability (M2), as the ledger holds it.

A movement's arrival (applied, or held for review with its reason) is its own ledger row: since
ledger 0018 (``movement.arrival_seq``) the payments run writes no event beside it, and the history
(``changes.history``) shows the row as the event it used to be written as, with the same text
(``movement_text``). A million movements are then a million rows, not two million, and no entry at
a random place of the event table's index by liability. What happens to a movement later (released
after review, held again for another reason, dismissed, its liability closed in FBS) is still
written as an event; the row's ``hold_reason`` is the current reason, and ``arrival_reason``
(ledger 0019) keeps the one it arrived with once a look again has replaced it.

Movements that arrived before ledger 0018 have no ``arrival_seq``: their arrival is an event of its
own, and they are not shown again here.

In ``core`` (the ledger's own tables), not in ``payments``: the history (``changes``) reads it, and
the payments run writes it; ``payments`` already depends on ``changes`` through ``transfer``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.engine import Connection

from fbs_debitor.core.db import as_amount, as_date, as_datetime, in_query
from fbs_debitor.core.identity import mask_cprs_in


class Moved(NamedTuple):
    """A movement's values as the trail shows them (``payments.files.Movement`` has the same)."""
    movement_id: str
    fordring_id: str
    kind: str
    amount: Decimal
    booked_on: dt.date
    reference_id: str | None = None


def movement_text(m: Moved, file_name: str, reason: str | None) -> str:
    """What the audit trail says of a movement (``Moved``, or anything with its attributes: a
    ``payments.files.Movement``): kind, amount, day, ids, file, and why it was held."""
    what = f"{m.kind} {m.amount:.2f} booked {m.booked_on:%Y-%m-%d} (movement {m.movement_id}, {m.fordring_id}"
    what += f", reverses {m.reference_id}" if m.reference_id else ""
    return mask_cprs_in(what + f", file {file_name})" + (f": held for review, {reason}" if reason else ""))


@dataclass(frozen=True)
class Arrival:
    at: dt.datetime
    seq: int
    kind: str           # payment_applied | payment_held (as it was decided when it arrived)
    detail: str


_ARRIVALS = in_query(
    "SELECT m.movement_id, m.fordring_id, m.kind, m.amount, m.booked_on, m.reference_id, "
    "COALESCE(m.arrival_reason, m.hold_reason) AS reason, m.received_at, m.arrival_seq, f.name "
    "FROM movement m JOIN payment_file f ON f.sha256 = m.file_sha256 "
    "WHERE m.fordring_id IN :f AND m.arrival_seq IS NOT NULL", "f")


def arrivals(conn: Connection, liability_id: int) -> list[Arrival]:
    """The movements on the liability's claims (each FordringID it was sent under: the outbox's,
    an increase's earlier ones, U1, included), each as it arrived. A movement held when it arrived
    is shown held with the reason it arrived with (``arrival_reason`` once it was replaced, ledger
    0019, else ``hold_reason``; a movement re-held before 0019 with its current one). Held again
    for another reason, released or dismissed later, the event of that (``payment_reheld``,
    ``payment_released``, ``payment_dismissed``) follows it."""
    fids = {r[0] for r in conn.execute(text("SELECT fordring_id FROM outbox WHERE liability_id = :l "
                                            "UNION SELECT fordring_id FROM claim WHERE liability_id = :l"),
                                       {"l": liability_id})}
    if not fids:
        return []
    out = []
    for r in conn.execute(_ARRIVALS, {"f": sorted(fids)}):
        m = Moved(r.movement_id, r.fordring_id, r.kind, as_amount(r.amount), as_date(r.booked_on), r.reference_id)
        out.append(Arrival(as_datetime(r.received_at), int(r.arrival_seq),
                           "payment_held" if r.reason else "payment_applied",
                           movement_text(m, r.name, r.reason)))
    return out
