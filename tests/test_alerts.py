"""Issue 20: run states that mean something, and alerts that reach a person.

What staff must fix in FBS (a held agency, C3; rejections) is a staff alarm and the run stays green;
what the integration could not do (an outage, a crash, a reconciliation difference) is an operator
alarm and the run is red, with ONE alert per failed run; deadlines alert; the daily digest says
each condition once. Mails go to a real SMTP server on loopback (the ``smtp_server`` fixture).
"""

from __future__ import annotations

import datetime as dt
import email
import json

import debtor
import fbs_rows as fr
import pytest
from airflow_env import airflow_env, dags_test
from leaks import full_cpr_numbers

from fbs_debitor.airflow import alerts, notifications  # imports Airflow (and its logging set-up) once, first
from fbs_debitor.core import alarms, ledger
from fbs_debitor.core.alarms import Alarm
from fbs_debitor.quality import digest

T0 = dt.datetime(2026, 11, 30, 6, 0, 0)
TEAM = "drift@kommune.example"


def _body(raw: bytes) -> str:
    message = email.message_from_bytes(raw)
    parts = [p.get_payload(decode=True).decode("utf-8") for p in message.walk() if not p.is_multipart()]
    return message["Subject"] + "\n" + "\n".join(parts)


def _smtp_connection(smtp) -> str:
    return json.dumps({"conn_type": "smtp", "host": smtp.host, "port": smtp.port,
                       "extra": {"from_email": smtp.from_email, "disable_ssl": True, "disable_tls": True}})


# --- item 1: the final checks raise alarms; only what the integration could not do fails -------------

def test_issue20_C3_a_held_agency_is_a_staff_alarm_the_task_succeeds_and_the_next_clean_run_resolves_it(stores,
                                                                                                         caplog):

    dq = {"blocked_agencies": {"799900": "Age limit 0 is outside 15-21 (FBS_DEBITOR_AGE_LIMIT_RANGE)"}}
    with caplog.at_level("WARNING"):
        assert notifications.held_agencies(stores.ledger, "run-1", dq) == ["799900"]
    assert "agency 799900 held until the setting is fixed" in caplog.text and "Age limit 0" in caplog.text
    notifications.held_agencies(stores.ledger, "run-2", dq)
    [a] = alarms.open_alarms(stores.ledger)
    assert (a.key, a.audience, a.occurrences) == ("held_agency:799900", alarms.STAFF, 2)
    assert notifications.held_agencies(stores.ledger, "run-3", {"blocked_agencies": {}}) == []
    assert alarms.open_alarms(stores.ledger) == []
    assert [r.key for r in alarms.resolved_unsaid(stores.ledger)] == ["held_agency:799900"]


def test_issue20_rejections_are_a_staff_alarm_per_agency_resolved_by_a_run_without(stores):
    from collections import Counter

    from fbs_debitor.transfer.run import rejections_per_agency

    counts = Counter({("715100", "rejected", "-"): 2, ("715100", "changes_rejected", "-"): 1,
                      ("726300", "accepted", "-"): 5})
    assert rejections_per_agency(counts) == {"715100": 3}
    notifications.rejections(stores.ledger, "run-1", rejections_per_agency(counts))
    [a] = alarms.open_alarms(stores.ledger)
    assert a.key == "rejections:715100" and a.audience == alarms.STAFF and "3 claim(s)/change(s)" in a.message
    notifications.rejections(stores.ledger, "run-2", {})
    assert alarms.open_alarms(stores.ledger) == []


def test_issue20_unconfirmed_claims_fail_the_run_with_an_operator_alarm_resolved_by_the_next_good_run(stores):
    from airflow.sdk.exceptions import AirflowFailException


    with pytest.raises(AirflowFailException, match="3 claim"):
        notifications.undelivered(stores.ledger, "run-1", {"unconfirmed": 3, "changes_unconfirmed": 0})
    [a] = alarms.open_alarms(stores.ledger)
    assert (a.key, a.audience) == ("unconfirmed:*", alarms.OPERATOR)
    assert notifications.undelivered(stores.ledger, "run-2", {"unconfirmed": 0}) == 0
    assert alarms.open_alarms(stores.ledger) == []
    with pytest.raises(AirflowFailException, match="2 difference"):
        notifications.payment_differences(stores.ledger, "run-3", {"differences": 2})
    assert [a.key for a in alarms.open_alarms(stores.ledger)] == ["payment_differences:*"]
    notifications.payment_differences(stores.ledger, "run-4", {"differences": 0})
    assert alarms.open_alarms(stores.ledger) == []
    # per agency, as the reconcile task hands them on; "" for those no agency's claim explains
    with pytest.raises(AirflowFailException, match="3 difference"):
        notifications.payment_differences(stores.ledger, "run-5", {"differences": 3,
                                                                   "differences_per_agency": {"715100": 2, "": 1}})
    assert sorted(a.key for a in alarms.open_alarms(stores.ledger)) == ["payment_differences:*",
                                                                       "payment_differences:715100"]
    notifications.payment_differences(stores.ledger, "run-6", {"differences": 0, "differences_per_agency": {}})
    assert alarms.open_alarms(stores.ledger) == []


# --- item 2: the daily digest ------------------------------------------------------------------------

def _conditions(stores):
    run = ledger.start_run(stores.ledger, "transfer")
    ledger.upsert_findings(stores.ledger, run, [
        ledger.Finding(check_code="company_cvr", rule="T5", severity="blocks_liability", agency_id="715100",
                       message="company without CVR", subject=f"L{n}", patron_id=n, liability_id=n)
        for n in (1, 2)], T0)
    alarms.raise_alarms(stores.ledger, "run-a", [
        Alarm("held_agency", alarms.STAFF, "agency 799900 held until the setting is fixed in FBS (C3): Age limit 0",
              "799900"),
        Alarm("rejections", alarms.STAFF, "2 claim(s)/change(s) rejected; patron 0101901234", "715100"),
        Alarm("unconfirmed", alarms.OPERATOR, "4 claim(s) and 0 change(s) got no answer")], at=T0)


def test_issue20_two_digests_in_a_row_say_each_condition_once_as_new_then_still_open(stores, smtp_server):
    collector, smtp = smtp_server
    _conditions(stores)
    first = digest.send_digest(stores.ledger, smtp, [TEAM], at=T0 + dt.timedelta(hours=1))
    assert first.status == digest.SENT and first.recipients == (TEAM,)
    [(_sender, rcpts, raw)] = collector.received
    text = _body(raw)
    assert rcpts == [TEAM] and full_cpr_numbers(text) == []
    # operator alarms first, then held agencies, then the rest; each new one marked NEW
    assert text.index("Operator alarms") < text.index("Held agencies") < text.index("Other conditions")
    assert text.count("[NEW]") == 3 and "agency 715100: 2" in text
    assert "1 operator alarm(s), 1 held agency(ies), 1 other staff alarm(s), 3 new, 0 resolved" in text

    # an hour later nothing changed but the held agency was fixed: the second digest says the rest
    # again only as still open, and the fixed one as resolved
    alarms.resolve_unseen(stores.ledger, ["held_agency"], [], at=T0 + dt.timedelta(hours=2))
    second = digest.send_digest(stores.ledger, smtp, [TEAM], at=T0 + dt.timedelta(hours=3))
    text2 = _body(collector.received[1][2])
    assert second.digest.new_count == 0 and "[NEW]" not in text2
    assert text2.count("still open since 2026-11-30 06:00") == 2
    assert "held_agency (agency 799900): resolved 2026-11-30 08:00" in text2
    # said once: a third digest no longer lists it as resolved
    digest.send_digest(stores.ledger, smtp, [TEAM], at=T0 + dt.timedelta(hours=4))
    assert "held_agency" not in _body(collector.received[2][2]) and len(collector.received) == 3


def test_issue20_a_digest_without_smtp_or_recipients_is_a_warning_and_marks_nothing(stores, smtp_server, caplog):
    collector, smtp = smtp_server
    _conditions(stores)
    with caplog.at_level("WARNING"):
        assert digest.send_digest(stores.ledger, None, [TEAM]).status == digest.NOT_SENT
        assert digest.send_digest(stores.ledger, smtp, []).status == digest.NOT_SENT
    assert "digest not sent" in caplog.text and collector.received == []
    assert all(a.is_new for a in alarms.open_alarms(stores.ledger))


# --- item 2: alerts -----------------------------------------------------------------------------------

@pytest.fixture
def alert_env(monkeypatch, smtp_server, db_urls):
    collector, smtp = smtp_server
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", _smtp_connection(smtp))
    monkeypatch.setenv("FBS_DEBITOR_ALERT_EMAIL", TEAM)
    monkeypatch.setenv("FBS_DEBITOR_FBS_URL", db_urls.fbs)
    monkeypatch.setenv("FBS_DEBITOR_LEDGER_URL", db_urls.ledger)
    return collector


class _Ti:
    task_id = "undelivered"


def test_issue20_a_failed_run_alerts_once_however_many_callbacks_say_it(stores, alert_env):
    """The failing task's callback and the run's callback both fire: one mail. The next good run
    resolves the run's operator alarm; a later failed run alerts again."""

    task_ctx = {"dag_run": {"dag_id": "debitor_transfer", "run_id": "scheduled__1"}, "ti": _Ti(),
                "exception": RuntimeError("no answer for patron 0101901234")}
    dag_ctx = {"dag_run": {"dag_id": "debitor_transfer", "run_id": "scheduled__1"}, "reason": "task_failure"}
    assert alerts.run_failed(task_ctx) is True
    assert alerts.run_failed(dag_ctx) is False and alerts.run_failed(task_ctx) is False
    [(_s, rcpts, raw)] = alert_env.received
    text = _body(raw)
    assert rcpts == [TEAM] and "debitor_transfer failed: task undelivered (run scheduled__1)" in text
    assert "RuntimeError" in text and full_cpr_numbers(text) == []
    [a] = alarms.open_alarms(stores.ledger)
    assert (a.key, a.audience) == ("debitor_transfer_failed:*", alarms.OPERATOR)
    alerts.run_succeeded({"dag_run": {"dag_id": "debitor_transfer", "run_id": "scheduled__2"}})
    assert alarms.open_alarms(stores.ledger) == []
    assert alerts.run_failed({**dag_ctx, "dag_run": {"dag_id": "debitor_transfer", "run_id": "scheduled__3"}})
    assert len(alert_env.received) == 2


def test_issue20_deadline_callback_sends_one_alert_mail(alert_env):

    context = {"dag_run": {"dag_id": "debitor_transfer", "run_id": "scheduled__x", "state": "running",
                           "queued_at": "2026-11-30T10:00:00Z"},
               "deadline": {"id": "1", "deadline_time": "2026-11-30T10:50:00Z"}}
    assert alerts.deadline_missed(context=context, dag_id="debitor_transfer", minutes=50) == 1
    [(_s, rcpts, raw)] = alert_env.received
    text = _body(raw)
    assert rcpts == [TEAM] and "debitor_transfer: run scheduled__x not finished in time" in text
    assert "50 minutes after it was queued" in text


CALLED: list[dict] = []


def recording_notifier(context):
    CALLED.append(context["fbs_debitor_alert"])


def test_issue20_a_notifier_the_deployment_configures_gets_each_alert_besides_the_mail(alert_env, monkeypatch):

    CALLED.clear()
    monkeypatch.setenv("FBS_DEBITOR_ALERT_NOTIFIERS", "test_alerts.recording_notifier, no_such_module.notifier")
    assert alerts.deadline_missed(context={"dag_run": {"dag_id": "debitor_payments", "run_id": "r"}}) == 2
    assert len(alert_env.received) == 1 and [c["subject"] for c in CALLED] == [
        "[fbs-debitor] debitor_payments: run r not finished in time"]


def test_issue20_every_dag_has_an_owner_a_description_failure_alerts_and_the_deadlines(dagbag):
    from airflow.sdk.definitions.deadline import DagRunQueuedAtDeadline
    from airflow.serialization.serialized_objects import DagSerialization

    for dag_id, dag in dagbag.dags.items():
        assert dag.description and "\n" not in dag.description, dag_id
        # debitor_backfill's params have no default, which Airflow 3.3.2's `dags test` cannot build a
        # DAG callback's context for: its alert comes from the failing task (finish, its last task)
        assert (dag.has_on_failure_callback and dag.has_on_success_callback) == (dag_id != "debitor_backfill"), dag_id
        assert all(t.owner == "fbs-debitor" and t.on_failure_callback for t in dag.tasks), dag_id
        assert "When is a run red" in dag.doc_md, dag_id
    deadlines = {}
    for dag_id in ("debitor_transfer", "debitor_payments"):
        [alert] = dagbag.dags[dag_id].deadline
        assert isinstance(alert.reference, DagRunQueuedAtDeadline)
        assert alert.callback.path == "fbs_debitor.airflow.alerts.deadline_missed"
        deadlines[dag_id] = alert.interval
        serialized = json.dumps(DagSerialization.to_dict(dagbag.dags[dag_id]), default=str)
        assert "fbs_debitor.airflow.alerts.deadline_missed" in serialized and "DagRunQueuedAtDeadline" in serialized
    assert deadlines == {"debitor_transfer": dt.timedelta(minutes=50), "debitor_payments": dt.timedelta(minutes=45)}
    assert dagbag.dags["debitor_dq_report"].get_task("email_digest").trigger_rule == "all_done"


def _metadata_url(db_urls, tmp_path, request) -> str | None:
    if not db_urls.fbs.startswith("postgresql"):
        return None
    from pgcluster import create_database

    return create_database(request.getfixturevalue("pg_admin_url"), f"airflow_{tmp_path.name[-20:]}".lower())


# --- through Airflow: a forced outage turns the run red and sends one alert ----------------------------

@pytest.mark.airflow
def test_issue20_an_outage_turns_the_transfer_run_red_and_sends_exactly_one_alert(stores, db_urls, tmp_path, request,
                                                                                 smtp_server):
    from pgcluster import free_port

    collector, smtp = smtp_server
    with stores.fbs.connect() as conn:
        fr.agency(conn)
        fr.liability(conn, fr.patron(conn)["patron_id"])
        conn.commit()
    env = airflow_env(tmp_path, db_urls, _metadata_url(db_urls, tmp_path, request))
    closed = f"http://127.0.0.1:{free_port()}/"                      # nothing listens there: an outage
    env.update(AIRFLOW_CONN_SERVICEPLATFORMEN=debtor.connection_json(closed, max_attempts=1, connect_timeout=1),
               AIRFLOW_CONN_SMTP_DEFAULT=_smtp_connection(smtp), FBS_DEBITOR_ALERT_EMAIL=TEAM,
               FBS_DEBITOR_VAR=str(tmp_path / "var"))
    state, output = dags_test(env, "debitor_transfer")
    assert state == "failed", output[-4000:]
    assert len(collector.received) == 1, output[-4000:]
    # both callbacks ran: the failed task's sent the alert, the run's found it sent and stayed quiet
    assert "Executing on_failure dag callback" in output and "already alerted; not again" in output
    text = _body(collector.received[0][2])
    assert "debitor_transfer failed" in text and "got no answer from the debtor system" in text
    assert full_cpr_numbers(text) == [] and full_cpr_numbers(output) == []
    keys = {a.key: a.audience for a in alarms.open_alarms(stores.ledger)}
    assert keys == {"unconfirmed:*": alarms.OPERATOR, "debitor_transfer_failed:*": alarms.OPERATOR}
