"""Issue 16, the payments inbox: one bad file, name or entry never stops the rest (P1), nothing is
moved that is not fbs-debitor's, names are shown escaped, and one cause makes one staff task (M1).

Every test works through the configured inbox (FBS_DEBITOR_PAYMENT_INBOX, ``open_inbox``) or a
folder given by hand, as ``payments --inbox DIR`` does, on real payment files
(DaekningAfskrivningRegistreringAfsend, ``files.to_xml``) in a real folder.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import Counter
from decimal import Decimal
from pathlib import Path

import fbs_rows
import pytest
from folder_tree import tree
from municipality import municipality
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from transfers import Crash, tasks, transfer

from fbs_debitor.core import ledger
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments import reconciliation
from fbs_debitor.payments.files import Movement, to_xml
from fbs_debitor.payments.inbox import FolderInbox, open_inbox
from fbs_debitor.sandbox import emulator

AGENCY = "715100"
UNTIL = dt.datetime(2026, 11, 20, 2, 0)
MARKER = ".fbs-debitor-payments"


@pytest.fixture
def payments_dir(tmp_path, monkeypatch) -> Path:
    """The configured payments folder: FBS_DEBITOR_PAYMENT_INBOX is its inbox/."""
    root = tmp_path / "payments"
    (root / "inbox").mkdir(parents=True)
    monkeypatch.setenv("FBS_DEBITOR_PAYMENT_INBOX", str(root / "inbox"))
    monkeypatch.delenv("FBS_DEBITOR_PAYMENT_ARCHIVE", raising=False)
    monkeypatch.delenv("FBS_DEBITOR_PAYMENT_QUARANTINE", raising=False)
    return root


@pytest.fixture
def agency(stores) -> str:
    with stores.fbs.connect() as conn:
        fbs_rows.agency(conn)
        conn.commit()
    return AGENCY


def unknown(mid: str, n: int = 1, fordring: str | None = None) -> Movement:
    """A payment on a claim fbs-debitor never sent: held as P_UNKNOWN_CLAIM."""
    return Movement(mid, fordring or f"FBS-{AGENCY}-9{n:08d}", "payment", Decimal("10.00"), dt.date(2026, 11, 19))


def payment_file(*mids: str) -> bytes:
    return to_xml([unknown(m, i) for i, m in enumerate(mids, start=1)], UNTIL)


def run(stores, location: str | None = None) -> Counter:
    """One payments run as the CLI does it; the run's recorded counts (agency, category, rule)."""
    run_id = ledger.start_run(stores.ledger, "payments")
    payments.ingest(stores, open_inbox(location), run_id)
    counts = payments.record_run_counts(stores.ledger, run_id)
    ledger.finish_run(stores.ledger, run_id, "success")
    return counts


def total(counts: Counter, category: str, rule: str | None = None) -> int:
    return sum(n for (_a, c, r), n in counts.items() if c == category and rule in (None, r))


def kept(folder: Path, name: str) -> list[bytes]:
    """The bytes of every file called ``name`` under ``folder`` (a repeated name is in a subfolder)."""
    return [v[1] for k, v in tree(folder).items() if os.path.basename(k) == os.fsencode(name) and v[0] == "file"]


def payment_files(stores) -> dict[str, str]:
    with stores.ledger.connect() as conn:
        return dict(conn.execute(text("SELECT name, state FROM payment_file")).all())


def movement_count(stores) -> int:
    with stores.ledger.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM movement")).scalar()


def one_line_each(caplog) -> bool:
    return all("\n" not in r.getMessage() and "\r" not in r.getMessage() for r in caplog.records)


# --- item 2: a name that is not UTF-8; a 255-byte name --------------------------------------------

def test_item2_non_utf8_file_name_does_not_stop_later_files_P1(stores, agency, payments_dir, caplog):
    """A name that is not UTF-8 crashed every run and later files were never applied. Now it is
    not a delivery name: left where it is, reported with its bytes escaped, and the file after
    it is applied; the next run reports it again and raises no second staff task."""
    caplog.set_level(logging.INFO)
    inbox = payments_dir / "inbox"
    with open(os.fsencode(inbox) + b"/DA-1-\xff\xfe.xml", "wb") as f:      # sorts before DA-2.xml
        f.write(payment_file("N1"))
    (inbox / "DA-2.xml").write_bytes(payment_file("G1"))
    before = tree(inbox)[b"DA-1-\xff\xfe.xml"]
    counts = run(stores)
    assert total(counts, "files_applied") == 1 and payment_files(stores) == {"DA-2.xml": "applied"}
    assert total(counts, "files_ignored", "bad_name") == 1
    assert tree(inbox) == {b"DA-1-\xff\xfe.xml": before}                   # untouched, the other one taken
    assert "DA-1-\\xff\\xfe.xml" in caplog.text and one_line_each(caplog)
    inbox_tasks = tasks(stores, "payment_inbox_entry")
    assert len(inbox_tasks) == 1 and "DA-1-\\xff\\xfe.xml" in inbox_tasks[0]["message"]
    again = run(stores)
    assert total(again, "files_ignored", "bad_name") == 1 and len(tasks(stores, "payment_inbox_entry")) == 1
    assert tree(inbox) == {b"DA-1-\xff\xfe.xml": before}


def test_item2_255_byte_name_is_quarantined_and_archived_and_kept_when_delivered_twice_P1(stores, agency,
                                                                                           payments_dir):
    """A 255-byte name crashed quarantine (its .reason.txt name too long) and, delivered twice,
    every run (the archive suffix). Now the reason goes under a name that fits and a second
    delivery of the name is kept in a subfolder: nothing overwritten, the run goes on."""
    inbox = payments_dir / "inbox"
    bad, good = "DA-" + "b" * 248 + ".xml", "DA-" + "g" * 248 + ".xml"
    assert len(bad.encode()) == len(good.encode()) == 255
    first, second = payment_file("L1"), payment_file("L2")
    (inbox / bad).write_bytes(b"<not well-formed")
    (inbox / good).write_bytes(first)
    counts = run(stores)
    assert (total(counts, "files_quarantined", "P_MALFORMED"), total(counts, "files_applied")) == (1, 1)
    quarantine, archive = payments_dir / "quarantine", payments_dir / "archive"
    reasons = [v[1] for k, v in tree(quarantine).items() if k.endswith(b".reason.txt")]
    assert len(reasons) == 1 and reasons[0].startswith(b"P_MALFORMED") and bad.encode() in reasons[0]
    assert all(len(os.path.basename(k)) <= 255 for k in tree(quarantine))

    (inbox / bad).write_bytes(b"<still not well-formed")                 # the same names again
    (inbox / good).write_bytes(second)
    counts = run(stores)
    assert (total(counts, "files_quarantined"), total(counts, "files_applied")) == (1, 1)
    (inbox / good).write_bytes(second)                                   # and the same bytes a third time
    run(stores)
    assert sorted(kept(quarantine, bad)) == [b"<not well-formed", b"<still not well-formed"]
    assert sorted(kept(archive, good)) == sorted([first, second, second])
    assert list(inbox.iterdir()) == [] and movement_count(stores) == 2
    assert len(tasks(stores, payments.TASK_KIND_FILE)) == 2


# --- item 2 / per-file isolation: any failure with one file ------------------------------------------

def test_item2_a_file_whose_handling_fails_is_quarantined_and_later_files_go_on_and_it_can_be_put_back_P1(
        stores, agency, payments_dir, monkeypatch):
    """An unexpected error while applying one file (here a bug, raised from apply_file) stopped
    the run. Now that file is quarantined as P_FAILED with a staff task, the next one is applied,
    and once the cause is fixed the same bytes put back are read again and applied once."""
    inbox = payments_dir / "inbox"
    (inbox / "DA-1.xml").write_bytes(payment_file("F1"))
    (inbox / "DA-2.xml").write_bytes(payment_file("F2"))
    real = payments.apply_file

    def failing(ledger_engine, name, *args, **kw):
        if name == "DA-1.xml":
            raise KeyError("a bug met in this file")
        return real(ledger_engine, name, *args, **kw)

    monkeypatch.setattr(payments, "apply_file", failing)
    counts = run(stores)
    assert total(counts, "files_quarantined", "P_FAILED") == 1 and total(counts, "files_applied") == 1
    assert payment_files(stores)["DA-2.xml"] == "applied" and list(inbox.iterdir()) == []
    failed = tasks(stores, payments.TASK_KIND_FILE)
    assert len(failed) == 1 and "P_FAILED" in failed[0]["message"] and "driften" in failed[0]["message"]

    monkeypatch.setattr(payments, "apply_file", real)                     # fixed; the operator puts it back
    os.replace(payments_dir / "quarantine" / "DA-1.xml", inbox / "DA-1.xml")
    counts = run(stores)
    assert total(counts, "files_applied") == 1 and movement_count(stores) == 2
    assert len(tasks(stores, payments.TASK_KIND_FILE)) == 1


def test_item2_unreadable_file_is_quarantined_and_the_next_goes_on_P1(stores, agency, payments_dir, monkeypatch):
    """A file that cannot be read (no permission, an I/O error) stopped the run; now it is
    quarantined as P_UNREADABLE, unread, with a staff task, and the next file is applied."""
    inbox = payments_dir / "inbox"
    (inbox / "DA-1.xml").write_bytes(payment_file("U1"))
    (inbox / "DA-2.xml").write_bytes(payment_file("U2"))
    real = FolderInbox.read

    def read(self, name, *args):
        if name == "DA-1.xml":
            raise PermissionError(13, "Permission denied")
        return real(self, name, *args)

    monkeypatch.setattr(FolderInbox, "read", read)
    counts = run(stores)
    assert total(counts, "files_quarantined", "P_UNREADABLE") == 1 and total(counts, "files_applied") == 1
    assert (payments_dir / "quarantine" / "DA-1.xml").exists() and list(inbox.iterdir()) == []


def test_item2_ledger_unreachable_for_one_file_leaves_it_in_place_and_the_next_run_applies_it_once_P1(
        stores, agency, payments_dir, monkeypatch):
    """A cause outside the file (the ledger unreachable or locked) is not the file's fault: it is
    left in the inbox, the other files are applied, and the run then fails naming it; the next
    run applies it, once."""
    inbox = payments_dir / "inbox"
    (inbox / "DA-1.xml").write_bytes(payment_file("T1"))
    (inbox / "DA-2.xml").write_bytes(payment_file("T2"))
    real = payments.apply_file

    def unreachable(ledger_engine, name, *args, **kw):
        if name == "DA-1.xml":
            raise OperationalError("INSERT INTO movement ...", {}, Exception("database is locked"))
        return real(ledger_engine, name, *args, **kw)

    monkeypatch.setattr(payments, "apply_file", unreachable)
    with pytest.raises(RuntimeError, match=r"left in the inbox for the next run.*DA-1\.xml") as failed:
        run(stores)
    assert type(failed.value).__name__ == "FilesLeft"
    assert [p.name for p in inbox.iterdir()] == ["DA-1.xml"] and payment_files(stores) == {"DA-2.xml": "applied"}
    monkeypatch.setattr(payments, "apply_file", real)
    counts = run(stores)
    assert total(counts, "files_applied") == 1 and movement_count(stores) == 2 and list(inbox.iterdir()) == []
    assert tasks(stores, payments.TASK_KIND_FILE) == []


# --- item 4: payments --inbox DIR on a folder that is not the project's -------------------------------

def test_item4_payments_inbox_on_an_unrelated_folder_moves_nothing_and_raises_no_task(stores, agency, tmp_path,
                                                                                     payments_dir):
    """``payments --inbox DIR`` moved every regular file of any folder to DIR/../quarantine and
    raised a staff task per file and agency. Now a folder whose archive and quarantine are not
    fbs-debitor's is refused, naming the folder, before anything is read or moved."""
    home = tmp_path / "home"
    documents = home / "documents"
    documents.mkdir(parents=True)
    (documents / "letter.xml").write_bytes(b"<letter>Dear ...</letter>")
    (documents / "report.pdf").write_bytes(b"%PDF-1.7 ...")
    (documents / "DA-1.xml").write_bytes(payment_file("X1"))           # even a payment file
    (home / "archive").mkdir()
    (home / "archive" / "tax-2025.txt").write_text("mine")
    before = tree(home)
    with pytest.raises(RuntimeError, match="not an fbs-debitor payments folder") as refused:
        run(stores, str(documents))
    assert type(refused.value).__name__ == "InboxLayoutError" and str(home) in str(refused.value)
    assert tree(home) == before and not (home / "quarantine").exists()
    assert tasks(stores) == [] and payment_files(stores) == {}


def test_item4_a_folder_given_by_hand_is_taken_when_fbs_debitor_made_its_layout(stores, agency, tmp_path,
                                                                              payments_dir, monkeypatch):
    """The rule's other side: a second payments folder, once run as the configured inbox, is
    marked as fbs-debitor's, and is then taken when given by hand."""
    other = tmp_path / "other-municipality" / "inbox"
    other.mkdir(parents=True)
    monkeypatch.setenv("FBS_DEBITOR_PAYMENT_INBOX", str(other))
    run(stores)                                                           # makes and marks the layout
    assert (other.parent / MARKER).is_file() and (other.parent / "archive").is_dir()
    monkeypatch.setenv("FBS_DEBITOR_PAYMENT_INBOX", str(payments_dir / "inbox"))
    (other / "DA-1.xml").write_bytes(payment_file("O1"))
    counts = run(stores, str(other))
    assert total(counts, "files_applied") == 1 and kept(other.parent / "archive", "DA-1.xml")


# --- item 11: newlines, links, FIFOs, folders; many movements on unknown claims -----------------------

def test_item11_newline_in_a_file_name_cannot_forge_a_log_line(stores, agency, payments_dir, caplog):
    """A newline in a name wrote a second, forged line into the log. Now such a name is not a
    delivery name: the file is left, and everywhere it is shown the newline is ``\\x0a``."""
    caplog.set_level(logging.DEBUG)
    inbox = payments_dir / "inbox"
    forged = b"DA-1.xml\n2026-11-20 05:00:01 INFO payment file DA-9.xml: 9 movement(s) applied.xml"
    with open(os.fsencode(inbox) + b"/" + forged, "wb") as f:
        f.write(payment_file("NL1"))
    counts = run(stores)
    run(stores)
    assert one_line_each(caplog) and "DA-1.xml\\x0a2026-11-20 05:00:01" in caplog.text
    assert total(counts, "files_ignored", "bad_name") == 1 and movement_count(stores) == 0
    assert os.path.lexists(os.fsencode(inbox) + b"/" + forged)
    [task] = tasks(stores, "payment_inbox_entry")
    assert "\n" not in task["message"] and "DA-1.xml\\x0a2026" in task["message"]
    summary = reconciliation.reconcile_payments(stores).summary()
    assert "DA-1.xml\\x0a2026" in summary and "\nINFO" not in summary


def test_item11_symlink_to_a_payment_file_outside_the_inbox_is_not_applied(stores, agency, tmp_path, payments_dir):
    """A symbolic link in the inbox to a file outside it was followed and the file applied. Now a
    link is never followed: left as it is, its target untouched, reported, one staff task."""
    inbox = payments_dir / "inbox"
    outside = tmp_path / "elsewhere" / "DA-outside.xml"
    outside.parent.mkdir()
    content = payment_file("S1")
    outside.write_bytes(content)
    os.symlink(outside, inbox / "DA-link.xml")
    counts = run(stores)
    assert total(counts, "files_ignored", "symlink") == 1 and total(counts, "files_applied") == 0
    assert movement_count(stores) == 0 and payment_files(stores) == {}
    assert os.readlink(inbox / "DA-link.xml") == str(outside) and outside.read_bytes() == content
    [task] = tasks(stores, "payment_inbox_entry")
    assert "DA-link.xml" in task["message"]


def test_item11_fifo_folder_and_dangling_link_are_reported_and_left_alone(stores, agency, tmp_path, payments_dir,
                                                                          caplog):
    """A FIFO, a folder and a dangling link in the inbox were skipped without a word. Now each is
    left as it is (the FIFO never opened, so it cannot block the run), logged by name and kind,
    counted in the run, and listed by reconciliation; the payment file beside them is applied."""
    caplog.set_level(logging.WARNING)
    inbox = payments_dir / "inbox"
    os.mkfifo(inbox / "DA-fifo.xml")
    (inbox / "DA-folder.xml").mkdir()
    (inbox / "DA-folder.xml" / "DA-inside.xml").write_bytes(payment_file("D1"))
    os.symlink(tmp_path / "nowhere.xml", inbox / "DA-dangling.xml")
    (inbox / "DA-good.xml").write_bytes(payment_file("D2"))
    before = {k: v for k, v in tree(inbox).items() if k != b"DA-good.xml"}
    counts = run(stores)
    assert total(counts, "files_applied") == 1 and movement_count(stores) == 1
    assert {r: total(counts, "files_ignored", r) for r in ("fifo", "folder", "symlink")} == {
        "fifo": 1, "folder": 1, "symlink": 1}
    assert tree(inbox) == before
    for name in ("DA-fifo.xml", "DA-folder.xml", "DA-dangling.xml"):
        assert any(name in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records), name
    listed = reconciliation.reconcile_payments(stores).ignored
    assert sorted(listed) == [("DA-dangling.xml", "symlink"), ("DA-fifo.xml", "fifo"), ("DA-folder.xml", "folder")]


@pytest.mark.slow
def test_item11_20000_movements_on_unknown_claims_make_a_handful_of_staff_tasks_M1(stores, agency, payments_dir):
    """20,000 movements on unknown claims made 20,012 staff tasks. Now one cause in one file is
    one task per agency concerned: its text names the count and the first movements, the
    ledger lists every one (movement.hold_task); a second run raises nothing new."""
    movements = [unknown(f"MV{i:05d}", i) for i in range(19_995)]
    movements += [unknown(f"MX{i}", fordring=f"OTHER-SYSTEM-{i}") for i in range(5)]     # no agency named
    (payments_dir / "inbox" / "DA-big.xml").write_bytes(to_xml(movements, UNTIL))
    counts = run(stores)
    assert total(counts, "movements_held", payments.UNKNOWN_CLAIM) == 20_000
    held = tasks(stores, payments.TASK_KIND_MOVEMENT)
    assert len(held) == 2 and {t["agency_id"] for t in held} == {AGENCY}
    big = next(t for t in held if "19995" in t["message"])
    assert "MV00000" in big["message"] and "MV00019" in big["message"] and "MV00020" not in big["message"]
    assert "og 19975 flere" in big["message"] and " / " in big["message"] and len(big["message"]) < 5000
    with stores.ledger.connect() as conn:
        groups = dict(conn.execute(text("SELECT hold_task, COUNT(*) FROM movement GROUP BY hold_task")).all())
    assert sorted(groups.values()) == [5, 19_995] and None not in groups
    run(stores)
    assert len(tasks(stores, payments.TASK_KIND_MOVEMENT)) == 2


def test_item11_a_grouped_hold_task_is_resolved_once_none_of_its_movements_is_held_M1(stores, emu_db, payments_dir):
    """A grouped task stays open while any movement it lists is held: two reversals on one
    liability waiting for the payments they undo are one task, resolved when the second of
    those payments arrives; three movements on unknown claims are one task, resolved when the
    last of them is dismissed after review."""
    ids = municipality(stores, adults=1)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
    lid = ids["adult"][0]
    fid = f"FBS-{AGENCY}-{lid}"
    inbox = payments_dir / "inbox"
    day = dt.date(2026, 11, 19)
    (inbox / "DA-1.xml").write_bytes(to_xml(
        [Movement("RA", fid, "reversal", Decimal("1.00"), day, "PA"),
         Movement("RB", fid, "reversal", Decimal("2.00"), day, "PB"),
         unknown("U1", 1), unknown("U2", 2), unknown("U3", 3)], UNTIL))
    run(stores)
    held = tasks(stores, payments.TASK_KIND_MOVEMENT)
    assert len(held) == 2
    [reversals] = [t for t in held if t["liability_id"] == lid]
    (inbox / "DA-2.xml").write_bytes(to_xml([Movement("PA", fid, "payment", Decimal("1.00"), day)], UNTIL))
    run(stores)
    assert [t["resolved_at"] for t in tasks(stores) if t["task_id"] == reversals["task_id"]] == [None]
    (inbox / "DA-3.xml").write_bytes(to_xml([Movement("PB", fid, "payment", Decimal("2.00"), day)], UNTIL))
    run(stores)
    assert [t["resolved_at"] is not None for t in tasks(stores) if t["task_id"] == reversals["task_id"]] == [True]
    [unknowns] = [t for t in tasks(stores, payments.TASK_KIND_MOVEMENT) if t["liability_id"] is None]
    for mid in ("U1", "U2"):
        assert payments.dismiss(stores.ledger, stores.fbs, mid, "checked with the debtor system")
    assert [t["resolved_at"] for t in tasks(stores) if t["task_id"] == unknowns["task_id"]] == [None]
    assert payments.dismiss(stores.ledger, stores.fbs, "U3", "checked with the debtor system")
    assert [t["resolved_at"] is not None for t in tasks(stores) if t["task_id"] == unknowns["task_id"]] == [True]


def test_item11_a_crash_between_raising_the_grouped_tasks_and_marking_them_raises_nothing_twice_M1(
        stores, agency, payments_dir, monkeypatch):
    """Exactly once across a crash: killed after the grouped hold task and the inbox entry's task
    are in FBS but before the ledger marks them, the next run raises neither again."""
    inbox = payments_dir / "inbox"
    (inbox / "DA-1.xml").write_bytes(payment_file("K1", "K2", "K3"))
    (inbox / "DA 2.xml").write_bytes(payment_file("K4"))               # a space: not a delivery name

    def crash(*_a, **_k):
        raise Crash("killed after the tasks were raised in FBS, before the ledger marked them")

    for step in ("_mark_tasked", "_mark_held"):                       # the inbox is reported first, then files
        with monkeypatch.context() as m:
            m.setattr(payments, step, crash)
            with pytest.raises(Crash):
                run(stores)
    assert len(tasks(stores, payments.TASK_KIND_MOVEMENT)) == 1 and len(tasks(stores, "payment_inbox_entry")) == 1
    run(stores)
    run(stores)
    assert len(tasks(stores, payments.TASK_KIND_MOVEMENT)) == 1 and len(tasks(stores, "payment_inbox_entry")) == 1
    with stores.ledger.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM movement WHERE hold_task IS NULL")).scalar() == 0
        assert conn.execute(text("SELECT COUNT(*) FROM payment_inbox_entry WHERE tasked_at IS NULL")).scalar() == 0


def test_item2_a_fordring_id_naming_an_agency_longer_than_the_ledger_holds_is_held_not_a_failure_P1(
        stores, agency, payments_dir):
    """A FordringID of FBS's form whose agency part is longer than an agency id (the schema allows
    64 characters) made the ledger refuse the whole file on PostgreSQL; it is a claim nobody
    knows, held like any other, and the other movements of the file are applied or held."""
    long = "FBS-" + "A" * 40 + "-1"
    (payments_dir / "inbox" / "DA-1.xml").write_bytes(to_xml([unknown("LA1", fordring=long), unknown("LA2")], UNTIL))
    counts = run(stores)
    assert total(counts, "files_applied") == 1 and total(counts, "movements_held", payments.UNKNOWN_CLAIM) == 2
    assert len(tasks(stores, payments.TASK_KIND_MOVEMENT)) == 2
