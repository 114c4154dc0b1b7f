"""Issue 18: locks every worker sees. A municipality's sending or payments lock excludes another
sender of the same municipality, whichever process or machine it runs on, and never another
municipality's; the all-municipalities lock holds them all on one database session."""

from __future__ import annotations

import threading
import time

from fbs_debitor.core.db import exclusive, exclusive_many, lock_part


def _waits(engine, name: str, part: str | None, holding) -> bool:
    """Whether taking (name, part) in another thread waits while ``holding`` is held."""
    got = threading.Event()

    def take():
        with exclusive(engine, name, part=part):
            got.set()

    with holding:
        t = threading.Thread(target=take, daemon=True)
        t.start()
        waited = not got.wait(0.5)
    t.join(10)
    assert got.is_set(), "the lock was never given once released"
    return waited


def test_issue18_a_municipalitys_lock_excludes_its_own_senders_only(stores):
    a, b = "29189404/KMD_OPUS", "29189633/EG"
    assert lock_part(a) != lock_part(b) and lock_part(None) == 0 and 0 < lock_part(a) < 2 ** 31
    assert _waits(stores.ledger, "sending", a, exclusive(stores.ledger, "sending", part=a))
    assert not _waits(stores.ledger, "sending", b, exclusive(stores.ledger, "sending", part=a))
    # the payments lock is another lock than the sending lock of the same municipality
    assert not _waits(stores.ledger, "payments", a, exclusive(stores.ledger, "sending", part=a))


def test_issue18_all_municipalities_locked_at_once_hold_every_part_then_release_them(stores):
    parts = [None, *(f"{n:08d}/EG" for n in range(40))]
    assert _waits(stores.ledger, "payments", parts[17], exclusive_many(stores.ledger, "payments", parts))
    assert _waits(stores.ledger, "payments", None, exclusive_many(stores.ledger, "payments", parts))
    assert not _waits(stores.ledger, "payments", "99999999/EG", exclusive_many(stores.ledger, "payments", parts))
    # released: every part can be taken again at once
    start = time.monotonic()
    with exclusive_many(stores.ledger, "payments", parts):
        pass
    assert time.monotonic() - start < 5


def test_issue18_all_municipalities_locks_take_one_database_session(stores):
    """Forty municipalities' locks must not take forty pooled connections (a national deployment has
    98): on PostgreSQL they are held by one session; on SQLite (one machine) they are forty file locks
    next to the database, one per municipality."""
    from pathlib import Path

    from sqlalchemy import text

    parts = [f"{n:08d}/PRISME" for n in range(40)]
    with exclusive_many(stores.ledger, "payments", parts):
        if stores.ledger.url.get_backend_name() == "postgresql":
            with stores.ledger.connect() as conn:
                sessions = conn.execute(text(
                    "SELECT COUNT(DISTINCT pid), COUNT(*) FROM pg_locks WHERE locktype = 'advisory'")).one()
            assert tuple(sessions) == (1, 40)
        else:
            database = Path(stores.ledger.url.database)
            files = {p.name for p in database.parent.glob(f"{database.name}.payments-*.lock")}
            assert files == {f"{database.name}.payments-{lock_part(p)}.lock" for p in parts}
