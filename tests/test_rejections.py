"""Issue 16: a rejected claim goes again once its cause is fixed, under the next generation of its
FordringID, once; and a call the debtor side refuses as a whole (HTTP 4xx, a SOAP Client fault)
is a rejection with a staff task, not an unconfirmed batch sent every hour. Against the
debtor-system emulator over real HTTP (a Prisme emulator rejects replacement CPR numbers, I3; one
with unmapped claim types rejects those, M3), on SQLite and PostgreSQL.

The transfer run calls ``rejections.requeue_changed`` in ``keep_claims_true``; ``look_again`` below
plays that step as a run of its own, so a test can watch what it records before the next transfer
sends it."""

from __future__ import annotations

import re
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fbs_rows as fr
import pytest
import requests
from leaks import full_cpr_numbers
from municipality import CHILD_CPR, fordring_ids, municipality, sendable
from sqlalchemy import text
from transfers import Crash, crash_at, once_each, outbox, tasks, transfer

from fbs_debitor.changes.history import format_history
from fbs_debitor.core import ledger
from fbs_debitor.delivery import outbox as delivery
from fbs_debitor.delivery import rejections
from fbs_debitor.sandbox import emulator

AGENCY = "715100"
REAL_CPR_1990 = "1705901003"   # born 17 May 1990 (the replacement patron's birth date), modulus-11 valid
FEES_ONLY = {"BIBLIOTEKSGEBYR_OVERSKREDET_LAANETID"}


def fid(liability_id: int, generation: int = 0) -> str:
    return f"FBS-{AGENCY}-{liability_id}" + (f"-{generation}" if generation else "")


def look_again(stores):
    """The run's step for rejected claims: those whose data changed are recorded again."""
    run_id = ledger.start_run(stores.ledger, "manual")
    counts = rejections.requeue_changed(stores, run_id)
    ledger.finish_run(stores.ledger, run_id, "success")
    return counts


def messages_of(stores, liability_id: int) -> list[dict]:
    with stores.ledger.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM outbox WHERE liability_id = :l ORDER BY version"),
                                              {"l": liability_id}).mappings()]


def claim_row(stores, liability_id: int) -> dict:
    with stores.ledger.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM claim WHERE liability_id = :l"), {"l": liability_id})
                    .mappings().one())


def events(stores, liability_id: int, kind: str) -> list[dict]:
    with stores.ledger.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM event WHERE liability_id = :l AND kind = :k"),
                                              {"l": liability_id, "k": kind}).mappings()]


def set_cpr(stores, liability_id: int, cpr: str) -> None:
    """Staff register the patron's real CPR number (the replacement CPR stays, I1)."""
    with stores.fbs.begin() as conn:
        conn.execute(text("UPDATE patron SET cpr = :c WHERE patron_id = "
                          "(SELECT patron_id FROM liability WHERE liability_id = :l)"), {"c": cpr, "l": liability_id})


# --- I3: the data behind the rejection changes --------------------------------------------------------

def test_I3_rejected_at_prisme_goes_again_once_under_generation_1_when_staff_register_a_real_cpr_issue16(
        stores, emu_db):
    ids = municipality(stores, vendor="PRISME")
    lid = ids["replacement"][0]
    with emulator.Emulator("PRISME", emu_db) as emu:
        transfer(stores, emu.url)
        (task,) = tasks(stores, "delivery_rejected")
        assert task["task_id"] == f"REJ-{lid}:1" and task["resolved_at"] is None
        assert look_again(stores) == {}                          # nothing changed: the rejection stands

        set_cpr(stores, lid, REAL_CPR_1990)
        assert look_again(stores) == {(AGENCY, rejections.SENT_AGAIN, "I3"): 1}
        assert look_again(stores) == {}                          # recorded once, not once per look
        transfer(stores, emu.url)
        requests_after = emu.request_count
        assert look_again(stores) == {}
        transfer(stores, emu.url)
        assert emu.request_count == requests_after               # nothing more goes, ever

    held = {c["fordring_id"]: c for c in emulator.claims(emu_db)}
    assert fid(lid) not in held                                  # the rejected FordringID holds nothing
    assert held[fid(lid, 1)]["identification_kind"] == "CPR" and held[fid(lid, 1)]["status"] == "ACTIVE"
    assert sorted(once_each(emu_db)) == sorted(fordring_ids(sendable(ids) - {lid}) | {fid(lid, 1)})
    box = messages_of(stores, lid)
    assert [(m["version"], m["change_kind"], m["fordring_id"], m["state"]) for m in box] == [
        (1, "create", fid(lid), "rejected"), (2, rejections.RECREATE, fid(lid, 1), "accepted")]
    assert box[0]["superseded_by"] == f"{lid}:2" and box[0]["task_resolved_at"] is not None
    claim = claim_row(stores, lid)
    assert (claim["fordring_id"], claim["generation"], claim["state"], claim["debtor_status"]) == (
        fid(lid, 1), 1, "accepted", "live")
    (task,) = tasks(stores, "delivery_rejected")                 # resolved, and no new one
    assert task["task_id"] == f"REJ-{lid}:1" and task["resolved_at"] is not None
    # M2: the trail links the rejected claim and the new one
    (again,) = events(stores, lid, rejections.SENT_AGAIN)
    assert again["message_key"] == f"{lid}:2" and fid(lid) in again["detail"] and fid(lid, 1) in again["detail"]
    assert "I3_ERSTATNINGS_CPR" in again["detail"]
    trail = format_history(stores, lid)
    assert "sent_again" in trail and "task_resolved" in trail and full_cpr_numbers(trail) == []


def test_I3_the_transfer_run_itself_sends_a_corrected_rejection_again_once_issue16(stores, emu_db):
    ids = municipality(stores, vendor="PRISME")
    lid = ids["replacement"][0]
    with emulator.Emulator("PRISME", emu_db) as emu:
        transfer(stores, emu.url)
        set_cpr(stores, lid, REAL_CPR_1990)
        transfer(stores, emu.url)                                # records it again and sends it
        requests_after = emu.request_count
        transfer(stores, emu.url)
        assert emu.request_count == requests_after
    assert fid(lid, 1) in once_each(emu_db) and fid(lid) not in once_each(emu_db)
    (task,) = tasks(stores, "delivery_rejected")
    assert task["resolved_at"] is not None


def test_M3_cli_requeue_records_the_claim_again_and_refuses_one_never_sent_issue16(stores, db_urls, emu_db,
                                                                                 monkeypatch, capsys):
    from fbs_debitor.cli import main

    ids = municipality(stores)
    company = ids["company"][0]
    with emulator.Emulator("KMD_OPUS", emu_db, accepted_claim_types=FEES_ONLY) as emu:
        transfer(stores, emu.url)
    monkeypatch.setenv("FBS_DEBITOR_FBS_URL", db_urls.fbs)
    monkeypatch.setenv("FBS_DEBITOR_LEDGER_URL", db_urls.ledger)
    assert main(["requeue", str(ids["blocked"][0])]) == 1
    assert "requeue:" in capsys.readouterr().err
    assert main(["requeue", str(company), "--note", f"mappet; borger {fr.ADULT_CPR} ringede"]) == 0
    out = capsys.readouterr()
    assert fid(company, 1) in out.out and full_cpr_numbers(out.out + out.err) == []
    assert main(["requeue", str(company)]) == 1                # once
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
    assert fid(company, 1) in once_each(emu_db)


def test_rejection_whose_data_did_not_change_is_never_sent_again_issue16(stores, emu_db):
    """A guard (the old code did not resend either): only a change sends a rejected claim again;
    another patron's change does not."""
    ids = municipality(stores, vendor="PRISME")
    lid = ids["replacement"][0]
    with emulator.Emulator("PRISME", emu_db) as emu:
        transfer(stores, emu.url)
        requests_after = emu.request_count
        set_cpr(stores, ids["adult"][0], fr.ADULT_CPR)          # someone else's data
        for _ in range(2):
            assert look_again(stores) == {}
            transfer(stores, emu.url)
    assert [(m["state"], m["superseded_by"]) for m in messages_of(stores, lid)] == [("rejected", None)]
    assert emu.request_count > requests_after                    # the adult's identity change went (U2) ...
    assert fid(lid) not in once_each(emu_db)                     # ... the rejected claim did not


def test_crash_after_recording_the_new_generation_sends_it_once_and_never_a_third_issue16(stores, emu_db,
                                                                                         monkeypatch):
    ids = municipality(stores, vendor="PRISME", adults=1)
    lid = ids["replacement"][0]
    with emulator.Emulator("PRISME", emu_db) as emu:
        transfer(stores, emu.url)
        set_cpr(stores, lid, REAL_CPR_1990)
        def crash(*_a, **_k):
            raise Crash("killed before the task was resolved")

        with monkeypatch.context() as m:       # dies after the ledger transaction, before the task is resolved
            m.setattr(rejections, "resolve_superseded_tasks", crash)
            with pytest.raises(Crash):
                look_again(stores)
        assert [m["state"] for m in messages_of(stores, lid)] == ["rejected", "pending"]
        crash_at("mark_attempt", stores, emu.url, monkeypatch)   # and the run sending it dies too
        assert look_again(stores) == {}
        transfer(stores, emu.url)
        transfer(stores, emu.url)
    assert [c for c in once_each(emu_db) if c.startswith(fid(lid))] == [fid(lid, 1)]
    assert [(m["fordring_id"], m["state"]) for m in messages_of(stores, lid)] == [
        (fid(lid), "rejected"), (fid(lid, 1), "accepted")]
    (task,) = tasks(stores, "delivery_rejected")
    assert task["resolved_at"] is not None                       # finished by the next run's task step


# --- M3: an operator requeues a claim whose cause was outside FBS ---------------------------------------

def test_M3_requeued_by_an_operator_goes_under_the_next_generation_once_the_type_is_mapped_issue16(stores, emu_db):
    ids = municipality(stores)
    company = ids["company"][0]
    with emulator.Emulator("KMD_OPUS", emu_db, accepted_claim_types=FEES_ONLY) as emu:
        transfer(stores, emu.url)
    assert outbox(stores)[company]["error_code"] == "M3_UMAPPET_KRAVTYPE"
    assert look_again(stores) == {}                  # nothing in FBS changed: only an operator can tell

    with pytest.raises(LookupError, match="never sent"):
        rejections.requeue(stores, ids["blocked"][0])
    with pytest.raises(LookupError, match="accepted"):
        rejections.requeue(stores, ids["adult"][0])
    said = rejections.requeue(stores, company, note=f"kravtypen er mappet i OPUS; borger {fr.ADULT_CPR} ringede")
    assert fid(company) in said and fid(company, 1) in said and f"{company}:2" in said
    with pytest.raises(LookupError, match="requeued"):
        rejections.requeue(stores, company)
    (event,) = events(stores, company, rejections.SENT_AGAIN)
    assert "requeued by an operator: kravtypen er mappet i OPUS" in event["detail"]
    assert fr.ADULT_CPR not in event["detail"] and f"{fr.ADULT_CPR[:6]}-****" in event["detail"]
    (task,) = tasks(stores, "delivery_rejected")
    assert task["resolved_at"] is not None

    with emulator.Emulator("KMD_OPUS", emu_db) as emu:          # the debtor side mapped the type
        transfer(stores, emu.url)
        requests_after = emu.request_count
        transfer(stores, emu.url)
        assert emu.request_count == requests_after
    held = {c["fordring_id"]: c for c in emulator.claims(emu_db)}
    assert held[fid(company, 1)]["kravtype"].startswith("ERSTATNING") and fid(company) not in held
    assert [(m["change_kind"], m["state"]) for m in messages_of(stores, company)] == [
        ("create", "rejected"), (rejections.RECREATE, "accepted")]


def test_a_new_generation_rejected_again_gets_its_own_task_and_can_be_requeued_again_M3_issue16(stores, emu_db):
    ids = municipality(stores, adults=1)
    company = ids["company"][0]
    with emulator.Emulator("KMD_OPUS", emu_db, accepted_claim_types=FEES_ONLY) as emu:
        transfer(stores, emu.url)
        rejections.requeue(stores, company, note="mapped, we were told")
        transfer(stores, emu.url)                                # ... but it was not
    assert claim_row(stores, company)["state"] == "rejected"
    assert {t["task_id"]: t["resolved_at"] is None for t in tasks(stores, "delivery_rejected")} == {
        f"REJ-{company}:1": False, f"REJ-{company}:2": True}
    assert "requeued as " + fid(company, 2) in rejections.requeue(stores, company)


def test_an_increases_new_claim_rejected_is_a_rejected_claim_no_change_goes_to_it_and_it_goes_again_U1_issue16(
        stores, emu_db):
    """The cancellation of an increase was accepted, its new claim rejected (M3): nothing is live
    at the debtor system, so the ledger's claim is rejected (no change is sent to a claim the
    debtor system does not hold); when FBS's amount is corrected it goes again as generation 2."""
    fee = municipality(stores, adults=1)["adult"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
    with stores.fbs.begin() as conn:
        conn.execute(text("UPDATE liability SET amount = 75 WHERE liability_id = :l"), {"l": fee})
    with emulator.Emulator("KMD_OPUS", emu_db, accepted_claim_types={"ERSTATNING_MED_ANERKENDELSE"}) as emu:
        transfer(stores, emu.url)
    assert [(m["change_kind"], m["state"]) for m in messages_of(stores, fee)] == [
        ("create", "accepted"), ("increase_cancel", "accepted"), ("increase_create", "rejected")]
    assert (claim_row(stores, fee)["fordring_id"], claim_row(stores, fee)["state"]) == (fid(fee, 1), "rejected")
    with stores.fbs.begin() as conn:
        conn.execute(text("UPDATE liability SET amount = 70 WHERE liability_id = :l"), {"l": fee})
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)    # no write-down to the claim never created; it goes again as generation 2
        assert look_again(stores) == {}                          # recorded again once, by that run
        transfer(stores, emu.url)
    held = {c["fordring_id"]: c for c in emulator.claims(emu_db)}
    assert fid(fee, 1) not in held and held[fid(fee)]["status"] == "CANCELLED"
    assert (held[fid(fee, 2)]["status"], held[fid(fee, 2)]["amount"]) == ("ACTIVE", Decimal("70.00"))
    assert [m["change_kind"] for m in messages_of(stores, fee)] == [
        "create", "increase_cancel", "increase_create", rejections.RECREATE]


# --- HTTP 4xx and SOAP Client faults: a refused call is a rejection ----------------------------------------

class Refusing:
    """Serviceplatformen in front of the emulator, refusing every call that carries one of the
    ``refuse`` FordringIDs: HTTP 400, or a SOAP Client fault; the rest are passed on unchanged."""

    def __init__(self, upstream: str, refuse: set[str], answer: str):
        self.upstream, self.refuse, self.answer = upstream, refuse, answer
        self.refused: list[set[str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a):
                pass

            def do_POST(self):  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                carried = set(re.findall(r"FBS-\d+-\d+(?:-\d+)?(?=<)", body.decode("utf-8")))
                if carried & proxy.refuse:
                    proxy.refused.append(carried)
                    if proxy.answer == "http400":
                        status, kind, out = 400, "text/plain", b"Bad Request: the request was refused\n"
                    else:
                        status, kind = 500, "text/xml; charset=utf-8"
                        out = emulator.fault_envelope("Client", "Anmodningen afvises / the request is refused")
                else:
                    passed = requests.post(proxy.upstream, data=body, timeout=30,
                                           headers={k: self.headers[k] for k in ("Content-Type", "SOAPAction")
                                                    if self.headers.get(k)})
                    status, kind, out = passed.status_code, passed.headers["Content-Type"], passed.content
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/service/OIR/DebitorRegistreringAfsend/1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.mark.parametrize(("answer", "code"), [("http400", "HTTP_400"), ("soap_client", "SOAP_CLIENT")])
def test_a_refused_call_rejects_its_claims_with_a_task_and_the_other_batches_still_go_issue16(stores, emu_db, answer,
                                                                                           code):
    """Needs ``DeliveryError.rejected`` (True for HTTP 4xx other than 408/429 and SOAP Client
    faults), which the Serviceplatformen client gains on another branch of issue 16."""
    ids = municipality(stores)
    target = ids["adult"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, Refusing(emu.url, {fid(target)}, answer) as sp:
        run_id, _ = transfer(stores, sp.url)
        (refused,) = sp.refused                                  # one call, not retried
        assert fid(target) in refused
        transfer(stores, sp.url)
        assert len(sp.refused) == 1                              # not sent again the next hour
    gone = {int(f.rsplit("-", 1)[1]) for f in refused}
    box = outbox(stores)
    assert {lid for lid, r in box.items() if r["state"] == "rejected"} == gone
    assert all(box[lid]["error_code"] == code and box[lid]["last_error"] for lid in gone)
    # the other batches went on: every other claim is at the debtor system
    assert sorted(once_each(emu_db)) == sorted(fordring_ids(sendable(ids) - gone))
    rejected_tasks = tasks(stores, "delivery_rejected")
    assert sorted(t["liability_id"] for t in rejected_tasks) == sorted(gone)
    assert all(code in t["message"] and "integration" in t["message"] for t in rejected_tasks)
    counts = ledger.run_counts(stores.ledger, run_id)
    assert sum(n for (_, c, r), n in counts.items() if c == delivery.REJECTED and r == code) == len(gone)

    with emulator.Emulator("KMD_OPUS", emu_db) as emu:          # the cause is fixed: the operator requeues one
        rejections.requeue(stores, target, note="certifikatet er fornyet")
        transfer(stores, emu.url)
    assert fid(target, 1) in once_each(emu_db)


# --- the staff task text -------------------------------------------------------------------------------

def test_a_minors_claim_sent_again_raises_no_second_C5_task_and_keeps_the_child_cpr_masked_issue16(stores, emu_db):
    ids = municipality(stores, adults=1)
    minor = ids["minor"][0]
    with emulator.Emulator("KMD_OPUS", emu_db, accepted_claim_types={"ERSTATNING_MED_ANERKENDELSE"}) as emu:
        transfer(stores, emu.url)
        rejections.requeue(stores, minor)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
    assert [t["task_id"] for t in tasks(stores, "C5_minor_without_guardian")] == [f"C5-{minor}"]
    assert fid(minor, 1) in once_each(emu_db)
    with stores.ledger.connect() as conn:
        stored = " ".join(str(r[0]) for r in conn.execute(text("SELECT detail FROM event")))
    assert CHILD_CPR not in stored and full_cpr_numbers(stored) == []
