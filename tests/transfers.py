"""Transfers against the debtor-system emulator and what they leave behind: a run in batches of
``BATCH``, a run that dies at an exact step, the outbox, FBS's staff tasks, the claims the
emulator holds and a run's delivery counts."""

from __future__ import annotations

import debtor
import pytest
from sqlalchemy import text

from fbs_debitor.core import ledger
from fbs_debitor.delivery import outbox as delivery
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer.run import run_transfer

BATCH = 3


class Crash(BaseException):
    """A process dying at an exact point: not an Exception, so no handler in the code catches it."""


def transfer(stores, url: str, sweep: bool = False, **client_over):
    """One transfer run (no data-quality checks; ``sweep``: everything, as debitor_sweep) to the
    emulator at ``url``; returns run_transfer's answer."""
    with debtor.client(url, **client_over) as client:
        return run_transfer(stores, client, batch_size=BATCH, data_quality=False, sweep=sweep)


def successful_run(stores, url: str, sweep: bool = False) -> str:
    """One ``transfer`` that must end successful; its ledger run id."""
    run_id, _ = transfer(stores, url, sweep=sweep)
    assert ledger.get_run(stores.ledger, run_id).status == "success"
    return run_id


def crash_at(step: str, stores, emu_url: str, monkeypatch) -> None:
    """One run that dies (a BaseException) where ``delivery.<step>`` would run: ``mark_attempt``
    is after recording and before sending, ``record_answers`` after the answer came back."""
    def crash(*_a, **_k):
        raise Crash(f"killed at {step}")

    with monkeypatch.context() as m:
        m.setattr(delivery, step, crash)
        with pytest.raises(Crash):
            transfer(stores, emu_url)


def outbox(stores) -> dict[int, dict]:
    """The ledger's outbox rows by liability id."""
    with stores.ledger.connect() as conn:
        rows = conn.execute(text("SELECT * FROM outbox")).mappings().all()
    return {r["liability_id"]: dict(r) for r in rows}


def tasks(stores, kind: str | None = None) -> list[dict]:
    """FBS's staff tasks (of one kind), in task-id order."""
    with stores.fbs.connect() as conn:
        rows = conn.execute(text("SELECT * FROM task ORDER BY task_id")).mappings().all()
    return [dict(r) for r in rows if kind is None or r["kind"] == kind]


def once_each(emu_db: str) -> list[str]:
    """The FordringIDs the emulator holds; the emulator's key makes a duplicate impossible to store,
    so 'exactly once' is: every expected id present, and the receiver never answered differently."""
    return [c["fordring_id"] for c in emulator.claims(emu_db)]


def delivery_totals(stores, run_id) -> dict[str, int]:
    """A run's delivery counts by category, rejections also by rule (``rejected:M3``)."""
    out: dict[str, int] = {}
    for (_a, category, rule), n in ledger.run_counts(stores.ledger, run_id).items():
        if category in delivery.DELIVERY_CATEGORIES:
            out[category] = out.get(category, 0) + n
            if category == delivery.REJECTED:
                out[f"rejected:{rule}"] = n
    return out
