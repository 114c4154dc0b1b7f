"""Issue 18, payments side: shared state only where every worker sees it. The payments inbox,
archive and quarantine live under FBS_DEBITOR_STORAGE_URL (an ``ObjectStoragePath``); on a store
that is not this machine's disk (``memory://`` here, standing for s3:// and the like) files are
listed, read and moved through it: the whole run applies each file exactly once, a repeated run
applies nothing twice, and a crash between a move's copy and its delete is finished by the next
run without a second copy. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import fbs_rows as fr
import pytest
from sqlalchemy import text
from transfers import Crash, transfer

from fbs_debitor.core import ledger, settings, storage
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments.files import Movement, to_xml
from fbs_debitor.payments.inbox import FolderInbox, ObjectInbox, open_inbox
from fbs_debitor.sandbox import emulator

AGENCY = "715100"
UNTIL = dt.datetime(2026, 11, 20, 2, 0)


@pytest.fixture
def store(monkeypatch):
    """A fresh memory:// root (the memory filesystem is one per process: a new bucket per test)."""
    root = f"memory://fbs-{uuid.uuid4().hex[:12]}/deployment"
    monkeypatch.setenv("FBS_DEBITOR_STORAGE_URL", root)
    for name in ("FBS_DEBITOR_PAYMENT_INBOX", "FBS_DEBITOR_PAYMENT_ARCHIVE", "FBS_DEBITOR_PAYMENT_QUARANTINE"):
        monkeypatch.delenv(name, raising=False)
    return storage.path("payments")


@pytest.fixture
def liabilities(stores, tmp_path) -> list[int]:
    with stores.fbs.connect() as conn:
        fr.agency(conn)
        ids = [fr.liability(conn, fr.patron(conn)["patron_id"], amount=Decimal("40.00"))["liability_id"]
               for _ in range(3)]
        conn.commit()
    with emulator.Emulator("KMD_OPUS", f"sqlite:///{tmp_path / 'emu.sqlite'}") as emu:
        transfer(stores, emu.url)
    return ids


def pay(mid: str, lid: int, amount: str = "10.00") -> Movement:
    return Movement(mid, f"FBS-{AGENCY}-{lid}", "payment", Decimal(amount), dt.date(2026, 11, 19))


def run(stores) -> dict[str, int]:
    run_id = ledger.start_run(stores.ledger, "payments")
    payments.ingest(stores, open_inbox(), run_id)
    counts = payments.record_run_counts(stores.ledger, run_id)
    ledger.finish_run(stores.ledger, run_id, "success")
    return payments.totals(counts)


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def movements(stores) -> dict[str, str]:
    with stores.ledger.connect() as conn:
        return dict(conn.execute(text("SELECT movement_id, state FROM movement")).all())


def fbs_payments(stores) -> int:
    with stores.fbs.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM payment")).scalar()


def test_issue18_D_the_default_inbox_is_under_the_storage_root(monkeypatch, tmp_path, store):
    """Unset, the inbox is ``payments/inbox`` under FBS_DEBITOR_STORAGE_URL: an object store's is an
    ObjectInbox; a file:// root gives the local folder inbox exactly as before; the settings take
    any fsspec URL for the three folders but sftp://."""
    box = open_inbox()
    assert isinstance(box, ObjectInbox) and str(box.inbox) == str(store / "inbox")
    assert str(box.archive_dir) == str(store / "archive") and str(box.quarantine_dir) == str(store / "quarantine")
    monkeypatch.setenv("FBS_DEBITOR_STORAGE_URL", (tmp_path / "shared").as_uri())
    local = open_inbox()
    assert isinstance(local, FolderInbox) and local.inbox == tmp_path / "shared" / "payments" / "inbox"
    assert settings.value("FBS_DEBITOR_PAYMENT_INBOX") == str(tmp_path / "shared" / "payments" / "inbox")
    env = {"FBS_DEBITOR_PAYMENT_INBOX": "s3://bucket/payments/inbox",
           "FBS_DEBITOR_PAYMENT_ARCHIVE": "s3://bucket/payments/done"}
    assert settings.value("FBS_DEBITOR_PAYMENT_INBOX", env) == "s3://bucket/payments/inbox"
    assert not any("PAYMENT" in p for p in settings.validate({**env, "FBS_DEBITOR_VAR": str(tmp_path)}))
    refused = settings.validate({"FBS_DEBITOR_PAYMENT_INBOX": "sftp://host/inbox", "FBS_DEBITOR_VAR": str(tmp_path)})
    assert any("sftp" in p for p in refused)
    assert any("PAYMENT_ARCHIVE" in p for p in settings.validate({"FBS_DEBITOR_PAYMENT_ARCHIVE": "relative/done",
                                                                  "FBS_DEBITOR_VAR": str(tmp_path)}))


def test_issue18_D_a_whole_run_on_an_object_store_applies_each_file_exactly_once(stores, liabilities, store):
    """Files delivered to the memory:// inbox: the good ones applied and moved to the archive, the
    bad one quarantined with its reason next to it, what is not a payment file left alone and
    reported; a second run applies nothing again; the same bytes delivered again are recognised."""
    inbox = store / "inbox"
    good = to_xml([pay("S1", liabilities[0]), pay("S2", liabilities[1])], UNTIL)
    (inbox / "DA-1.xml").write_bytes(good)
    (inbox / "DA-2.xml").write_bytes(to_xml([pay("S3", liabilities[2], "40.00")], UNTIL))
    (inbox / "DA-broken.xml").write_bytes(good[:150])
    (inbox / "notes.txt").write_bytes(b"not a payment file")
    done = run(stores)
    assert done["files_applied"] == 2 and done["files_quarantined"] == 1 and done["movements_applied"] == 3
    assert movements(stores) == {"S1": "applied", "S2": "applied", "S3": "applied"} and fbs_payments(stores) == 3
    assert names(inbox) == ["notes.txt"]
    assert names(store / "archive") == ["DA-1.xml", "DA-2.xml"]
    assert (store / "archive" / "DA-1.xml").read_bytes() == good
    assert names(store / "quarantine") == ["DA-broken.xml", "DA-broken.xml.reason.txt"]
    assert (store / "quarantine" / "DA-broken.xml.reason.txt").read_bytes().startswith(b"P_MALFORMED")
    assert (store / ".fbs-debitor-payments").exists()

    again = run(stores)
    assert again.get("files_applied", 0) == 0 and again.get("movements_applied", 0) == 0
    assert fbs_payments(stores) == 3
    (inbox / "DA-1-again.xml").write_bytes(good)            # the same bytes under another name
    assert run(stores).get("movements_applied", 0) == 0 and fbs_payments(stores) == 3
    assert names(inbox) == ["notes.txt"] and "DA-1-again.xml" in names(store / "archive")


def test_issue18_D_a_crash_between_the_copy_and_the_delete_of_a_move_is_finished_once(
        stores, liabilities, store, monkeypatch):
    """A store has no rename: a move is a copy, then the delete. Killed between the two (the file
    applied, copied to the archive, still in the inbox), the next run knows the file by its
    SHA-256, finds the same bytes already in the archive and only deletes the original: one copy,
    applied once."""
    inbox = store / "inbox"
    data = to_xml([pay("C1", liabilities[0])], UNTIL)
    (inbox / "DA-1.xml").write_bytes(data)

    def copy_then_die(self, name):
        (self.archive_dir / name).write_bytes((self.inbox / name).read_bytes())
        raise Crash("killed between the copy and the delete")

    with monkeypatch.context() as m:
        m.setattr(ObjectInbox, "archive", copy_then_die)
        with pytest.raises(Crash):
            run(stores)
    assert names(inbox) == ["DA-1.xml"] and names(store / "archive") == ["DA-1.xml"]
    assert movements(stores) == {"C1": "applied"} and fbs_payments(stores) == 0
    done = run(stores)
    assert done.get("movements_applied", 0) == 0                  # not applied again; written back now
    assert names(inbox) == [] and names(store / "archive") == ["DA-1.xml"]        # no again-*/ copy
    assert movements(stores) == {"C1": "applied"} and fbs_payments(stores) == 1


def test_issue18_D_the_payments_reconciliation_report_is_written_to_the_shared_store(stores, liabilities, store):
    """The run's reconciliation report goes under ``reports/payments/`` of the storage root: on an
    object store as one object, whole; on the default local root where it always was."""
    from fbs_debitor.payments import reconciliation

    path = reconciliation.report_path("run-1")
    assert str(path) == str(storage.path("reports", "payments", "reconciliation-run-1.csv"))
    reconciliation.reconcile_payments(stores).write_csv(path)
    assert path.read_bytes().startswith(b"liability_id,fordring_id,difference")
