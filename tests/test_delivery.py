"""Exactly-once delivery against the debtor-system emulator over real HTTP on loopback, on SQLite
and PostgreSQL: a normal run, a rerun, crashes at each step of the outbox, a killed process,
transient faults, permanent rejections as staff tasks (M1, M3, I3), mutual TLS, and no CPR leak."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal

import debtor
import fbs_rows as fr
import pytest
from certs import certificates
from leaks import full_cpr_numbers
from municipality import fordring_ids, municipality, sendable
from sqlalchemy import text
from transfers import BATCH, crash_at, delivery_totals, once_each, outbox, tasks, transfer

from fbs_debitor.core import ledger
from fbs_debitor.core.settings import HOME
from fbs_debitor.delivery import outbox as delivery
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer import run as transfer_run

# --- the normal run ----------------------------------------------------------------------------------

def test_normal_run_delivers_every_eligible_claim_once_and_a_rerun_sends_nothing(stores, emu_db):
    ids = municipality(stores)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        run_id, _ = transfer(stores, emu.url)
        requests_after_first = emu.request_count
        rerun_id, _ = transfer(stores, emu.url)
        assert emu.request_count == requests_after_first          # nothing new went over the wire

    held = sorted(once_each(emu_db))
    assert held == sorted(fordring_ids(sendable(ids)))
    box = outbox(stores)
    assert set(box) == sendable(ids)
    assert {r["state"] for r in box.values()} == {"accepted"}
    assert all(r["message_key"] == f"{lid}:1" and r["attempts"] == 1 and r["debtor_ref"].startswith("KMD_OPUS-")
               for lid, r in box.items())
    by_id = {c["fordring_id"]: c for c in emulator.claims(emu_db)}
    assert all(by_id[r["fordring_id"]]["debitor_reference"] == r["debtor_ref"] for r in box.values())
    assert delivery_totals(stores, run_id) == {"accepted": len(sendable(ids))}
    assert delivery_totals(stores, rerun_id) == {}
    # M2: the audit trail shows each claim recorded, sent and accepted, in that order
    with stores.ledger.connect() as conn:
        kinds = [r[0] for r in conn.execute(text("SELECT kind FROM event WHERE liability_id = :l ORDER BY occurred_at, "
                                                 "CASE kind WHEN 'recorded' THEN 0 WHEN 'sent' THEN 1 ELSE 2 END"),
                                            {"l": ids["adult"][0]})]
        claim_states = {r[0] for r in conn.execute(text("SELECT state FROM claim"))}
    assert kinds == ["recorded", "sent", "accepted"] and claim_states == {"accepted"}


def test_late_arriving_liability_from_an_earlier_window_is_sent_by_the_next_run_T1(stores, emu_db):
    ids = municipality(stores, adults=1)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        with stores.fbs.connect() as conn:        # created days ago, in the extract only now
            p = fr.patron(conn)
            late = fr.liability(conn, p["patron_id"], created_at=dt.datetime.now() - dt.timedelta(days=3))
            conn.commit()
        run_id, _ = transfer(stores, emu.url)
    assert delivery_totals(stores, run_id) == {"accepted": 1}
    assert sorted(once_each(emu_db)) == sorted(fordring_ids(sendable(ids) | {late["liability_id"]}))


def test_I1_replacement_cpr_is_in_fbs_before_the_claim_is_sent_and_C5_task_raised(stores, emu_db, monkeypatch):
    ids = municipality(stores)
    seen_in_fbs: list[str | None] = []
    real_mark = delivery.mark_attempt

    def spy(ledger_engine, run_id, keys, attempt):
        with stores.fbs.connect() as conn:
            seen_in_fbs.append(conn.execute(text(
                "SELECT p.replacement_cpr FROM patron p JOIN liability l ON l.patron_id = p.patron_id "
                "WHERE l.liability_id = :l"), {"l": ids["replacement"][0]}).scalar())
        return real_mark(ledger_engine, run_id, keys, attempt)

    monkeypatch.setattr(delivery, "mark_attempt", spy)
    with emulator.Emulator("EG", emu_db) as emu:
        transfer(stores, emu.url)
    assert seen_in_fbs and all(n is not None and int(n[0]) >= 6 for n in seen_in_fbs)   # day field + 60
    claim = next(c for c in emulator.claims(emu_db) if c["fordring_id"] == f"FBS-715100-{ids['replacement'][0]}")
    assert claim["identification_kind"] == "ERSTATNING_CPR"
    assert claim["identification"] == f"{seen_in_fbs[0][:6]}-****"
    c5 = tasks(stores, "C5_minor_without_guardian")
    assert [t["liability_id"] for t in c5] == ids["minor"]


# --- crashes at each step ---------------------------------------------------------------------------

def test_crash_between_recorded_and_sent_ends_with_every_claim_exactly_once(stores, emu_db, monkeypatch):
    ids = municipality(stores)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        crash_at("mark_attempt", stores, emu.url, monkeypatch)
        assert emu.request_count == 0 and once_each(emu_db) == []
        box = outbox(stores)
        assert len(box) == BATCH and {r["state"] for r in box.values()} == {"pending"}
        run = ledger.get_run(stores.ledger)
        assert run.status == "failed" and "Crash" in run.error

        run_id, _ = transfer(stores, emu.url)
    assert sorted(once_each(emu_db)) == sorted(fordring_ids(sendable(ids)))
    box = outbox(stores)
    assert {r["state"] for r in box.values()} == {"accepted"} and all(r["attempts"] == 1 for r in box.values())
    assert delivery_totals(stores, run_id) == {"accepted": len(sendable(ids))}


def test_crash_between_sent_and_answer_recorded_resends_under_the_same_keys(stores, emu_db, monkeypatch):
    ids = municipality(stores)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        crash_at("record_answers", stores, emu.url, monkeypatch)
        first = {c["fordring_id"]: c["debitor_reference"] for c in emulator.claims(emu_db)}
        assert len(first) == BATCH                                   # the receiver has the first batch
        box = outbox(stores)
        assert {r["state"] for r in box.values()} == {"sent"} and len(box) == BATCH

        run_id, _ = transfer(stores, emu.url)
    held = once_each(emu_db)
    assert sorted(held) == sorted(fordring_ids(sendable(ids))) and len(held) == len(set(held))
    box = outbox(stores)
    assert {r["state"] for r in box.values()} == {"accepted"}
    resent = [r for r in box.values() if r["fordring_id"] in first]
    assert len(resent) == BATCH
    # the resend got the receiver's FIRST answer: the same reference, nothing new created
    assert all(r["debtor_ref"] == first[r["fordring_id"]] and r["attempts"] == 2 for r in resent)
    assert delivery_totals(stores, run_id)["accepted"] == len(sendable(ids))


def test_changed_in_fbs_before_the_answer_is_resent_as_it_is_and_recorded_M2(stores, emu_db, monkeypatch):
    ids = municipality(stores, adults=2)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        crash_at("record_answers", stores, emu.url, monkeypatch)
        victim = next(r["liability_id"] for r in outbox(stores).values())
        first_print = outbox(stores)[victim]["fingerprint"]
        with stores.fbs.begin() as conn:   # the claim text (F6) changes: the material's title
            conn.execute(text("UPDATE material SET title = 'Ny titel' WHERE item_number = "
                              "(SELECT item_number FROM loan WHERE loan_id = "
                              "(SELECT loan_id FROM liability WHERE liability_id = :l))"), {"l": victim})
        transfer(stores, emu.url)
    with stores.ledger.connect() as conn:
        kinds = [r[0] for r in conn.execute(text("SELECT kind FROM event WHERE liability_id = :l"), {"l": victim})]
    assert "content_changed_before_answer" in kinds
    # it had left once, so the receiver may hold the first version: the ledger keeps that fingerprint
    assert outbox(stores)[victim]["fingerprint"] == first_print
    assert sorted(c["fordring_id"] for c in emulator.claims(emu_db)) == sorted(fordring_ids(sendable(ids)))


def test_amount_changed_before_the_answer_is_resent_as_recorded_and_then_sent_as_a_change_U1(stores, emu_db,
                                                                                           monkeypatch):
    municipality(stores, adults=2)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        crash_at("record_answers", stores, emu.url, monkeypatch)
        victim = next(r["liability_id"] for r in outbox(stores).values())
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE liability SET amount = :a WHERE liability_id = :l"), {"a": "99.00", "l": victim})
        transfer(stores, emu.url)
    held = {c["fordring_id"]: c for c in emulator.claims(emu_db)}
    # the resend carried the amount recorded, so the receiver's first claim is consistent either way;
    # the increase then went as a change: the first claim cancelled, a new one at the new amount (U1)
    assert held[f"FBS-715100-{victim}"]["status"] == "CANCELLED"
    assert held[f"FBS-715100-{victim}-1"]["status"] == "ACTIVE"
    assert held[f"FBS-715100-{victim}-1"]["amount"] == Decimal("99.00")


def test_sent_liability_moved_to_another_agency_is_never_resent_under_a_new_fordring_id(stores, emu_db, monkeypatch):
    municipality(stores, adults=2)
    with stores.fbs.connect() as conn:
        fr.agency(conn, agency_id="715200", org_unit_uuid="6a2e9b63-1d49-4b54-8a6f-3c8b2d1e0f33")
        conn.commit()
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        crash_at("record_answers", stores, emu.url, monkeypatch)
        moved = min(outbox(stores))
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE liability SET agency_id = '715200' WHERE liability_id = :l"), {"l": moved})
        run_id, _ = transfer(stores, emu.url)
    held = once_each(emu_db)
    assert f"FBS-715100-{moved}" in held and f"FBS-715200-{moved}" not in held
    row = outbox(stores)[moved]
    assert row["state"] == "sent" and row["error_code"] == delivery.NOT_REBUILDABLE and "715200" in row["last_error"]
    (task,) = tasks(stores, "delivery_blocked")
    assert task["liability_id"] == moved and task["task_id"] == f"BLK-{moved}:1" and row["task_id"] == task["task_id"]
    assert delivery_totals(stores, run_id)["unconfirmed"] == 1


def test_recorded_but_never_sent_liability_cancelled_meanwhile_is_withdrawn_not_sent(stores, emu_db, monkeypatch):
    ids = municipality(stores, adults=2)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        crash_at("mark_attempt", stores, emu.url, monkeypatch)
        cancelled = min(outbox(stores))
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE liability SET status = 'cancelled' WHERE liability_id = :l"), {"l": cancelled})
        transfer(stores, emu.url)
    assert f"FBS-715100-{cancelled}" not in once_each(emu_db)
    assert sorted(once_each(emu_db)) == sorted(fordring_ids(sendable(ids) - {cancelled}))
    assert cancelled not in outbox(stores)
    with stores.ledger.connect() as conn:
        kinds = [r[0] for r in conn.execute(text("SELECT kind FROM event WHERE liability_id = :l"), {"l": cancelled})]
        in_claims = conn.execute(text("SELECT COUNT(*) FROM claim WHERE liability_id = :l"), {"l": cancelled}).scalar()
    assert "withdrawn_before_sending" in kinds and in_claims == 0


def test_unconfirmed_claim_that_no_longer_builds_gets_a_task_at_once_and_goes_when_fixed(stores, emu_db, monkeypatch):
    municipality(stores, adults=2)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        crash_at("record_answers", stores, emu.url, monkeypatch)
        broken = min(outbox(stores))
        with stores.fbs.begin() as conn:   # a fee loses its loan: no founding date (F3)
            loan = conn.execute(text("SELECT loan_id FROM liability WHERE liability_id = :l"), {"l": broken}).scalar()
            conn.execute(text("UPDATE liability SET loan_id = NULL WHERE liability_id = :l"), {"l": broken})
        transfer(stores, emu.url)
        assert outbox(stores)[broken]["error_code"] == delivery.NOT_REBUILDABLE
        (task,) = tasks(stores, "delivery_blocked")
        assert "F3" in outbox(stores)[broken]["last_error"] and "Ret data i FBS" in task["message"]
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE liability SET loan_id = :o WHERE liability_id = :l"), {"o": loan, "l": broken})
        transfer(stores, emu.url)
    row = outbox(stores)[broken]
    assert row["state"] == "accepted" and row["error_code"] is None
    assert once_each(emu_db).count(f"FBS-715100-{broken}") == 1


@pytest.mark.slow
def test_killed_process_while_waiting_for_the_answer_ends_with_every_claim_once(stores, db_urls, emu_db, tmp_path):
    """A real SIGKILL of `python -m fbs_debitor transfer` while its first batch is on the wire."""
    ids = municipality(stores)
    slow = 4.0
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=1.0, fault_kinds=("slow",), slow_seconds=slow) as emu:
        env = {**os.environ, "FBS_DEBITOR_FBS_URL": db_urls.fbs, "FBS_DEBITOR_LEDGER_URL": db_urls.ledger,
               "FBS_DEBITOR_VAR": str(tmp_path / "var"), "FBS_DEBITOR_HOME": str(HOME),
               "PYTHONPATH": str(HOME / "plugins"), "FBS_DEBITOR_BATCH_SIZE": str(BATCH),
               "AIRFLOW_CONN_SERVICEPLATFORMEN": debtor.connection_json(emu.url, operation_timeout=60)}
        proc = subprocess.Popen([sys.executable, "-m", "fbs_debitor", "transfer"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while not any(r["state"] == "sent" for r in outbox(stores).values()):
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the transfer never marked a batch sent"
                time.sleep(0.1)
            # the batch is marked sent before its envelope is posted: kill only once the emulator has read it
            while emu.request_count < 1:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the emulator never read the sent batch"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()
        deadline = time.monotonic() + slow + 20       # the emulator finishes the request it had read
        while len(once_each(emu_db)) < BATCH and time.monotonic() < deadline:
            time.sleep(0.2)
    assert len(once_each(emu_db)) == BATCH
    assert {r["state"] for r in outbox(stores).values()} == {"sent"}

    with emulator.Emulator("KMD_OPUS", emu_db) as emu:        # the debtor system is healthy again
        transfer(stores, emu.url)
    held = once_each(emu_db)
    assert sorted(held) == sorted(fordring_ids(sendable(ids)))
    assert {r["state"] for r in outbox(stores).values()} == {"accepted"}


# --- faults -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_20_percent_transient_faults_end_with_every_claim_delivered_once(stores, emu_db):
    ids = municipality(stores, adults=30)
    kinds = ("http500", "http503", "drop", "drop_after_store", "soapfault", "slow")
    runs = []
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=0.2, fault_kinds=kinds, slow_seconds=1.5, seed=7) as emu:
        for _ in range(6):                                     # hourly runs until nothing is unconfirmed
            run_id, _ = transfer(stores, emu.url, operation_timeout=0.5, max_attempts=3)
            runs.append(delivery_totals(stores, run_id))
            if delivery.unconfirmed_total(stores.ledger) == 0:
                break
        faults = dict(emu.faults)
    assert sum(faults.values()) >= 3, faults
    held = once_each(emu_db)
    assert sorted(held) == sorted(fordring_ids(sendable(ids)))
    box = outbox(stores)
    assert {r["state"] for r in box.values()} == {"accepted"}
    assert sum(r["attempts"] for r in box.values()) > len(box)          # retries really happened
    assert sum(r.get("accepted", 0) for r in runs) == len(sendable(ids))  # each accepted in exactly one run


def test_outage_stops_the_run_after_the_first_unanswered_batch_and_M1_delayed_tasks_once(stores, emu_db, monkeypatch):
    ids = municipality(stores, adults=1)                       # 4 claims: a batch of 3 and a batch of 1
    monkeypatch.setenv("FBS_DEBITOR_DELAYED_TASK_ATTEMPTS", "4")
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=1.0, fault_kinds=("http503",)) as emu:
        first, _ = transfer(stores, emu.url, max_attempts=2)
        # the first batch got no answer after 2 attempts: the rest of the run sent nothing new
        assert emu.request_count == 2
        assert len(outbox(stores)) == BATCH and all(r["attempts"] == 2 for r in outbox(stores).values())
        counts = ledger.run_counts(stores.ledger, first)
        assert sum(n for (_a, c, r), n in counts.items() if (c, r) == ("deferred", "outage")) == 1
        assert delivery_totals(stores, first) == {"unconfirmed": BATCH}
        assert tasks(stores, "delivery_delayed") == []
        for _ in range(3):
            transfer(stores, emu.url, max_attempts=2)
    box = outbox(stores)
    assert set(box) == sendable(ids) and {r["state"] for r in box.values()} <= {"sent"}
    due = {lid for lid, r in box.items() if r["attempts"] >= 4}
    delayed = tasks(stores, "delivery_delayed")
    assert due and sorted(t["liability_id"] for t in delayed) == sorted(due)      # one per claim, not per run
    assert all("HTTP 503" in t["message"] and "integration" in t["message"] for t in delayed)


# --- permanent rejections -----------------------------------------------------------------------------

def test_M3_unmapped_claim_type_rejections_become_tasks_and_are_never_retried(stores, emu_db):
    ids = municipality(stores)
    fees_only = {"BIBLIOTEKSGEBYR_OVERSKREDET_LAANETID"}
    with emulator.Emulator("KMD_OPUS", emu_db, accepted_claim_types=fees_only) as emu:
        run_id, _ = transfer(stores, emu.url)
        before = emu.request_count
        transfer(stores, emu.url)
        assert emu.request_count == before                       # a rejection is not sent again
    box = outbox(stores)
    company = box[ids["company"][0]]
    assert company["state"] == "rejected" and company["error_code"] == "M3_UMAPPET_KRAVTYPE"
    assert delivery_totals(stores, run_id) == {"accepted": len(sendable(ids)) - 1, "rejected": 1, "rejected:M3": 1}
    (task,) = tasks(stores, "delivery_rejected")
    assert task["liability_id"] == ids["company"][0] and task["task_id"] == f"REJ-{company['message_key']}"
    assert "Kravtypen er ikke mappet" in task["message"] and "claim type is not mapped" in task["message"]
    assert company["task_id"] == task["task_id"]


def test_I3_prisme_rejects_replacement_cpr_claims_and_staff_get_a_task(stores, emu_db):
    ids = municipality(stores, vendor="PRISME")
    with emulator.Emulator("PRISME", emu_db) as emu:
        run_id, _ = transfer(stores, emu.url)
    box = outbox(stores)
    rejected = {lid for lid, r in box.items() if r["state"] == "rejected"}
    assert rejected == set(ids["replacement"])
    assert box[ids["replacement"][0]]["error_code"] == "I3_ERSTATNINGS_CPR"
    (task,) = tasks(stores, "delivery_rejected")
    assert "Fujitsu Prisme" in task["message"] and "erstatningspersonnummer" in task["message"]
    assert "replacement CPR" in task["message"]
    assert delivery_totals(stores, run_id)["rejected:I3"] == 1
    with stores.fbs.connect() as conn:          # I1: the number stays, whatever the debtor system said
        assert conn.execute(text("SELECT COUNT(*) FROM patron WHERE replacement_cpr IS NOT NULL")).scalar() == 1


def test_each_agency_meets_its_own_vendor_through_one_emulator(stores, emu_db):
    municipality(stores)
    with stores.fbs.connect() as conn:
        fr.agency(conn, agency_id="726300", debtor_vendor="PRISME", org_unit_uuid="6a2e9b63-1d49-4b54-8a6f-3c8b2d1e0f33")
        p = fr.patron(conn, agency_id="726300", cpr=None, birth_date=dt.date(1988, 1, 2))
        prisme = fr.liability(conn, p["patron_id"], agency_id="726300")["liability_id"]
        conn.commit()
    by_org_unit = emulator.vendors_from_fbs(str(stores.fbs.url.render_as_string(hide_password=False)))
    with emulator.Emulator("EG", emu_db, vendor_by_org_unit=by_org_unit) as emu:
        transfer(stores, emu.url)
    box = outbox(stores)
    assert box[prisme]["error_code"] == "I3_ERSTATNINGS_CPR"                       # Søvang runs Prisme
    assert all(r["debtor_ref"].startswith("KMD_OPUS-") for lid, r in box.items() if lid != prisme)


# --- mutual TLS and leaks ------------------------------------------------------------------------------

def test_mutual_tls_delivers_with_the_client_certificate_and_not_without(stores, emu_db, tmp_path):
    ids = municipality(stores, adults=2)
    p = certificates(tmp_path)
    server = emulator.tls_context(p["server_cert"], p["server_key"], client_ca=p["ca_cert"])
    with emulator.Emulator("EG", emu_db, tls=server) as emu:
        refused, _ = transfer(stores, emu.url, ca_bundle=p["ca_cert"], max_attempts=2)
        assert once_each(emu_db) == []
        assert delivery_totals(stores, refused)["unconfirmed"] == len(outbox(stores))
        assert all(r["last_error"] for r in outbox(stores).values())
        transfer(stores, emu.url, ca_bundle=p["ca_cert"], client_cert=p["client_cert"], client_key=p["client_key"])
    assert sorted(once_each(emu_db)) == sorted(fordring_ids(sendable(ids)))
    assert {r["state"] for r in outbox(stores).values()} == {"accepted"}


def test_no_full_cpr_in_logs_ledger_or_tasks_of_a_full_run_with_faults(stores, emu_db, caplog):
    municipality(stores, vendor="PRISME")
    caplog.set_level(logging.DEBUG)
    kinds = ("http503", "drop_after_store", "soapfault")
    with emulator.Emulator("PRISME", emu_db, fault_rate=0.3, fault_kinds=kinds, seed=1) as emu:
        for _ in range(3):
            transfer(stores, emu.url)
    assert caplog.records and full_cpr_numbers(caplog.text) == []
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "<soap" in r.getMessage().lower()]
    with stores.ledger.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(text(
            "SELECT detail FROM event UNION ALL SELECT last_error FROM outbox UNION ALL SELECT error FROM run"))
            for v in row)
    assert full_cpr_numbers(stored) == []
    assert full_cpr_numbers(" ".join(t["message"] for t in tasks(stores))) == []


# --- one bad record or agency never stops the rest (issue 16) ------------------------------------------

def _findings(stores, code: str) -> list[dict]:
    with stores.ledger.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM finding WHERE check_code = :c AND resolved_at IS NULL"),
                                              {"c": code}).mappings()]


def test_M1_an_invalid_message_is_never_sent_and_becomes_a_finding_on_its_liability_issue16(stores, emu_db,
                                                                                         monkeypatch, caplog):
    """A bug in fbs-debitor's mapping writes a 250-character line into one claim's text after the
    builder checked it (the builder blocks such a line as F6 itself): that message fails the
    schema, is never sent, and staff and operators see the liability as a finding naming the
    element and the schema error; every other claim goes."""
    from fbs_debitor.claims import sf1590

    ids = municipality(stores)
    broken = ids["adult"][1]
    with stores.fbs.connect() as conn:
        number = conn.execute(text("SELECT number FROM liability WHERE liability_id = :l"), {"l": broken}).scalar_one()
    real = sf1590._claim

    def claim_element(parent, claim):
        real(parent, claim)
        if claim.liability_id == broken:
            lines = parent[-1].find(sf1590._dr("FordringTekst"))
            sf1590._sub(lines, sf1590._dr("Linje"), f"{'x' * 236} {number} {fr.ADULT_CPR}")

    monkeypatch.setattr(sf1590, "_claim", claim_element)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        run_id, counts = transfer(stores, emu.url)
        transfer(stores, emu.url)                                 # still broken: seen again, still open
    assert sorted(once_each(emu_db)) == sorted(fordring_ids(sendable(ids) - {broken}))
    assert broken not in outbox(stores)
    (finding,) = _findings(stores, "M1_liability_not_processable")
    assert (finding["liability_id"], finding["rule"], finding["severity"], finding["agency_id"]) == (
        broken, "M1", "blocks_liability", "715100")
    assert number in finding["message"] and "Linje" in finding["message"] and "does not validate" in finding["message"]
    assert full_cpr_numbers(finding["message"]) == [] and full_cpr_numbers(caplog.text) == []
    assert counts[("715100", "blocked", "XSD")] == 1
    monkeypatch.setattr(sf1590, "_claim", real)                   # the bug fixed: it goes, the finding is resolved
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
    assert f"FBS-715100-{broken}" in once_each(emu_db) and _findings(stores, "M1_liability_not_processable") == []


def _second_agency(stores, n: int = 2) -> list[int]:
    """Agency 726300 (EG) with ``n`` adults' fees, created after the first agency's liabilities."""
    with stores.fbs.connect() as conn:
        fr.agency(conn, agency_id="726300", debtor_vendor="EG", org_unit_uuid="6a2e9b63-1d49-4b54-8a6f-3c8b2d1e0f33")
        out = [fr.liability(conn, fr.patron(conn, agency_id="726300")["patron_id"], agency_id="726300")["liability_id"]
               for _ in range(n)]
        conn.commit()
    return out


def _transfer_allowing_agency_failure(stores, url: str):
    """One transfer; the run ends failed naming the agency, but only after every other agency's
    part was done."""
    transfer(stores, url)
    run = ledger.get_run(stores.ledger)
    assert run.status == "failed" and "agency 715100: RuntimeError" in run.error and "726300" not in run.error
    return run.run_id, ledger.run_counts(stores.ledger, run.run_id)


def test_an_unexpected_error_in_one_agencys_part_of_a_page_does_not_stop_the_other_agency_issue16(stores, emu_db,
                                                                                                monkeypatch, caplog):
    ids = municipality(stores, adults=2)
    other = _second_agency(stores)
    real = delivery.record_batch

    def record_batch(ledger_engine, run_id, batch, prints):
        if batch.agency_id == "715100":
            raise RuntimeError(f"ledger trouble while recording (patron {fr.ADULT_CPR})")
        return real(ledger_engine, run_id, batch, prints)

    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        with monkeypatch.context() as m:
            m.setattr(delivery, "record_batch", record_batch)
            run_id, counts = _transfer_allowing_agency_failure(stores, emu.url)
        assert sorted(once_each(emu_db)) == sorted(f"FBS-726300-{lid}" for lid in other)
        assert counts[("715100", delivery.FAILED, "RuntimeError")] == len(sendable(ids))
        assert not [lid for lid in outbox(stores) if lid in sendable(ids)]       # left unrecorded: next run
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and "agency 715100" in r.getMessage()]
        assert errors and "RuntimeError" in errors[0].getMessage() and full_cpr_numbers(caplog.text) == []
        transfer(stores, emu.url)                                 # the trouble is over
    assert sorted(once_each(emu_db)) == sorted(fordring_ids(sendable(ids)) | {f"FBS-726300-{lid}" for lid in other})


def test_an_unexpected_error_resending_one_agencys_claims_does_not_stop_the_other_agency_issue16(stores, emu_db,
                                                                                              monkeypatch):
    ids = municipality(stores, adults=2)
    other = _second_agency(stores)
    real = delivery.send_batch
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        with monkeypatch.context() as m:      # every claim recorded, none sent (as after a crash)
            m.setattr(delivery, "send_batch", lambda *_a, **_k: None)
            transfer(stores, emu.url)
        assert {r["state"] for r in outbox(stores).values()} == {"pending"}

        def send_batch(ledger_engine, client, run_id, batch, link=None, versions=None):
            if batch.agency_id == "715100":
                raise RuntimeError("connection pool exhausted")
            return real(ledger_engine, client, run_id, batch, link, versions)

        failed: Counter = Counter()
        run_id = ledger.start_run(stores.ledger, "manual")
        with monkeypatch.context() as m, debtor.client(emu.url) as client:
            m.setattr(delivery, "send_batch", send_batch)
            delivery.resend_unconfirmed(stores, client, run_id, BATCH, failed=failed)
        assert failed == {("715100", delivery.RESEND_FAILED, "RuntimeError"): len(sendable(ids))}
        # the run ends failed naming it, after the rest
        assert "agency 715100: RuntimeError" in transfer_run.failure_message(transfer_run.agency_failures(failed))
        assert sorted(once_each(emu_db)) == sorted(f"FBS-726300-{lid}" for lid in other)
        assert {outbox(stores)[lid]["state"] for lid in sendable(ids)} == {"pending"}
        transfer(stores, emu.url)
    assert sorted(once_each(emu_db)) == sorted(fordring_ids(sendable(ids)) | {f"FBS-726300-{lid}" for lid in other})
