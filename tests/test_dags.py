"""The DAG files import cleanly, are shaped as operators expect, and run through Airflow."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import debtor
import fbs_rows as fr
import pytest
from airflow_env import airflow_env, dags_test, run_airflow
from leaks import full_cpr_numbers
from sqlalchemy import text

from fbs_debitor.core import ledger
from fbs_debitor.core.settings import HOME
from fbs_debitor.eligibility.rules import BLOCKED, ELIGIBLE, OUT_OF_SCOPE
from fbs_debitor.sandbox import emulator


def test_all_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "debitor_transfer" in dagbag.dags


LIGHT = "from fbs_debitor.payments.rhythm import pickup_crons"   # the schedule is configuration, read at parse time


def test_dag_files_keep_heavy_imports_out_of_module_level():
    """DAG files are parsed every few seconds: no pandas/lxml/zeep/GX/domain imports at top level
    (the payments schedule module is the one exception, and it imports only the standard library)."""
    for path in (HOME / "dags").glob("*.py"):
        top_level = [line for line in path.read_text().splitlines() if re.match(r"^(import|from) ", line)]
        heavy = [line for line in top_level if line != LIGHT
                 and re.search(r"\b(pandas|lxml|zeep|great_expectations|fbs_debitor|sqlalchemy)\b", line)]
        assert heavy == [], f"{path.name}: {heavy}"
    rhythm_imports = [line for line in (HOME / "plugins/fbs_debitor/payments/rhythm.py").read_text().splitlines()
                      if re.match(r"^(import|from) ", line)]
    assert {line.split()[1] for line in rhythm_imports} <= {"__future__", "datetime", "os", "dataclasses", "zoneinfo",
                                                            "fbs_debitor.core.settings"}


def test_payments_dag_is_scheduled_from_the_vendors_rhythms_P1(dagbag, monkeypatch):
    dag = dagbag.dags["debitor_payments"]
    assert sorted(t.expression for t in dag.timetable.timetables) == [
        "0 5 * * *", "10 * * * *", "5-59/15 * * * *"]          # KMD OPUS nightly, Prisme hourly, EG every 15
    assert dag.max_active_runs == 1 and dag.catchup is False and dag.doc_md
    # Issue 18: each municipality's files in its own mapped task (labelled by municipality), files of
    # several or none by the run-level rest; reconciliation and the verdicts run whatever happened.
    assert [t.task_id for t in dag.topological_sort()] == [
        "open_run", "payment_units", "ingest", "ingest_rest", "reconcile", "differences", "failed_municipalities"]
    # every task has retries, the verdicts too: they fail at once by AirflowFailException, so a retry
    # only serves a try lost with its worker (issue 18: a killed worker leaves no false red)
    assert all(t.retries >= 1 for t in dag.tasks)
    assert dag.get_task("ingest").map_index_template == "{{ unit_label }}"
    assert {dag.get_task(t).trigger_rule for t in ("ingest_rest", "reconcile", "failed_municipalities")} == {
        "all_done"}
    from fbs_debitor.payments.rhythm import pickup_crons

    monkeypatch.setenv("FBS_DEBITOR_PAYMENT_VENDORS", "KMD_OPUS")
    assert pickup_crons() == ["0 5 * * *"]
    monkeypatch.setenv("FBS_DEBITOR_PAYMENT_VENDORS", "PRISME,EG")
    monkeypatch.setenv("FBS_DEBITOR_PRISME_PAYMENT_RHYTHM", "nightly")
    monkeypatch.setenv("FBS_DEBITOR_EG_PAYMENT_MINUTES", "5")
    assert pickup_crons() == ["0 5 * * *", "0-59/5 * * * *"]
    monkeypatch.setenv("FBS_DEBITOR_EG_PAYMENT_MINUTES", "7")
    with pytest.raises(ValueError, match="divide 60"):
        pickup_crons()


def test_issue19_debitor_sweep_is_the_transfer_run_over_everything_nightly_and_says_what_markers_missed(dagbag):
    from airflow.sdk import CronDataIntervalTimetable

    sweep, hourly = dagbag.dags["debitor_sweep"], dagbag.dags["debitor_transfer"]
    assert isinstance(sweep.timetable, CronDataIntervalTimetable) and sweep.timetable.expression == "30 2 * * *"
    assert sweep.max_active_runs == 1 and sweep.catchup is False
    # the same steps as the hourly run, plus its word on the markers before the run is closed
    assert set(sweep.task_ids) - set(hourly.task_ids) == {"markers_missed"}
    assert sweep.get_task("markers_missed").upstream_task_ids - {"open_run"} == {"raise_staff_tasks"}
    assert sweep.get_task("close_run").upstream_task_ids - {"open_run"} == {"markers_missed"}
    assert sweep.get_task("markers_missed").trigger_rule == "all_done"


def test_issue19_a_sweep_hour_out_of_range_is_an_import_error_naming_the_setting(monkeypatch):
    import importlib.util

    monkeypatch.setenv("FBS_DEBITOR_SWEEP_HOUR", "24")
    spec = importlib.util.spec_from_file_location("sweep_hour_check", HOME / "dags" / "debitor_transfer.py")
    with pytest.raises(ValueError, match="FBS_DEBITOR_SWEEP_HOUR='24': allowed is a whole number from 0 to 23"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_transfer_dag_is_hourly_with_a_real_window_and_one_run_at_a_time(dagbag):
    import pendulum
    from airflow.sdk import CronDataIntervalTimetable
    from airflow.serialization.encoders import coerce_to_core_timetable

    dag = dagbag.dags["debitor_transfer"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    start = pendulum.datetime(2026, 11, 20, 10, 0, tz="UTC")
    # the window as the scheduler computes it from the DAG's timetable
    interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(run_after=start)
    assert interval.end - interval.start == dt.timedelta(hours=1)
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert {"fbs-debitor", "transfer"} <= set(dag.tags) and dag.doc_md
    order = [t.task_id for t in dag.topological_sort()]
    # the cut-off check comes first (T3); changes to claims already sent go after the new claims of
    # the same run (U1-U4)
    assert order[:2] == ["open_run", "detect_cut_off"]
    alarms = {"held_agencies", "failed_agencies", "undelivered"}
    main = [t for t in order if t != "trigger_backfill" and t not in alarms]
    # Issue 19: the run fixes what it looks at (what FBS marked changed) before anything reads it;
    # the checks read the batch the sending steps found (eligibility is read once per run), after
    # every municipality whatever happened to any, and before the run's staff tasks and close
    assert main[:4] == ["open_run", "detect_cut_off", "regular_run", "changes_since"]
    assert main[-3:] == ["data_quality", "raise_staff_tasks", "close_run"]
    assert dag.get_task("data_quality").trigger_rule == "all_done"
    assert dag.get_task("trigger_backfill").upstream_task_ids == {"detect_cut_off"}
    assert set(order[-3:]) == alarms and all(dag.get_task(t).upstream_task_ids >= {"close_run"} for t in alarms)
    # Issue 18: the municipality is the unit of isolation. Per debtor system, the municipalities
    # are listed, then each one's sending is a mapped group (labelled by municipality in the grid):
    # unconfirmed first, the new claims, the changes (U1-U4 after the new claims), then whether it
    # is done; each debtor system's steps are in its own pool, first before debitor_backfill's months.
    from fbs_debitor.transfer.units import VENDORS, pool_for

    for vendor in VENDORS:
        group = f"send_{vendor.lower()}"
        listed = dag.get_task(f"municipalities_{vendor.lower()}")
        assert listed.upstream_task_ids >= {"changes_since"}
        assert f"{group}.municipality_done" in dag.get_task("data_quality").upstream_task_ids
        steps = [f"{group}.{s}" for s in ("resend_unconfirmed", "build_and_send", "send_changes", "municipality_done")]
        assert [t for t in main if t.startswith(group + ".")] == steps
        for step in steps:
            task = dag.get_task(step)
            assert task.map_index_template == "{{ unit_label }}"
            assert listed.task_id in task.upstream_task_ids
        for step in steps[:3]:
            task = dag.get_task(step)
            assert task.pool == pool_for(vendor) and task.priority_weight > 1
        # one municipality's red group does not stop the run's closing steps
        assert f"{group}.municipality_done" in dag.get_task("raise_staff_tasks").upstream_task_ids
    assert dag.get_task("raise_staff_tasks").trigger_rule == dag.get_task("close_run").trigger_rule == "all_done"
    # Every task has retries (sending is safe to retry: the outbox keys it). The verdicts (a
    # municipality not done; a held agency, C3, a staff alarm; an agency whose work failed part-way
    # and claims still unconfirmed, which fail the run, issue 20) are facts to act on: they fail at
    # once with AirflowFailException (tested where each is raised), so their retries only serve a try
    # lost with its worker (issue 18: a worker killed while it ran municipality_done left it red).
    assert all(t.retries >= 1 for t in dag.tasks)


@pytest.mark.airflow
def test_every_pool_the_dags_use_is_declared_and_imports_into_airflow(dagbag, tmp_path):
    """The pools are declarative (include/airflow/pools.json, imported by ./run and docker-compose's
    airflow-init): every pool a task names is declared there, and Airflow accepts the file."""
    import json

    from airflow_env import airflow_env, migrate, run_airflow

    from fbs_debitor.core.settings import DEBTOR_VENDORS, DatabaseUrls

    declared = json.loads((HOME / "include/airflow/pools.json").read_text())
    used = {t.pool for d in dagbag.dags.values() for t in d.tasks} - {"default_pool"}
    # One pool per debtor system (issue 18), so a slow vendor does not starve the others.
    assert set(declared) == {f"debitor_{v.lower()}" for v in DEBTOR_VENDORS} == {
        "debitor_kmd_opus", "debitor_prisme", "debitor_eg"}
    assert used <= set(declared), f"pools used but not declared: {sorted(used - set(declared))}"
    assert "debitor_debtor_system" not in declared and "debitor_debtor_system" not in used
    assert all(p["slots"] >= 1 and "one pool per debtor system" in p["description"] for p in declared.values())
    env = airflow_env(tmp_path, DatabaseUrls(fbs="sqlite://", ledger="sqlite://"))
    migrate(env)
    imported = run_airflow(env, "pools", "import", str(HOME / "include/airflow/pools.json"))
    assert imported.returncode == 0, imported.stderr[-2000:]
    listed = run_airflow(env, "pools", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    slots = {p["pool"]: int(p["slots"]) for p in json.loads(listed.stdout[listed.stdout.index("["):])}
    assert {name: slots.get(name) for name in declared} == {name: p["slots"] for name, p in declared.items()}
    # The local Serviceplatformen connection is declared too (./run puts the emulator's URL in).
    local = json.loads((HOME / "include/airflow/local_connections.json").read_text())
    assert set(local["serviceplatformen"]["extra"]) >= {"service_agreement_uuid", "user_system_uuid", "user_uuid",
                                                         "connect_timeout", "operation_timeout"}


def test_backfill_dag_takes_validated_params_and_maps_one_task_per_month_behind_the_hourly_run(dagbag):
    """T3: debitor_backfill is manual (or triggered by the transfer run), one run at a time; its
    params are validated by Airflow; months are mapped tasks, one at a time, in the debtor-system
    pool at a lower priority than debitor_transfer's sending tasks."""
    from airflow.sdk.definitions.param import ParamsDict

    dag = dagbag.dags["debitor_backfill"]
    assert type(dag.timetable).__name__ == "NullTimetable"          # never scheduled: by hand or triggered
    assert dag.max_active_runs == 1 and dag.doc_md and "backfill" in dag.tags
    from fbs_debitor.transfer.units import VENDORS, pool_for

    order = [t.task_id for t in dag.topological_sort()]
    assert order[0] == "plan" and order[-1] == "finish"
    for vendor in VENDORS:
        # Issue 18: an agency's months go through its debtor system's pool, behind the hourly run's
        # sending to the same debtor system (a lower priority), one month at a time.
        chunk = dag.get_task(f"run_chunk_{vendor.lower()}")
        hourly = dagbag.dags["debitor_transfer"].get_task(f"send_{vendor.lower()}.build_and_send")
        assert chunk.pool == hourly.pool == pool_for(vendor)
        assert chunk.priority_weight < hourly.priority_weight and chunk.max_active_tis_per_dagrun == 1
        assert f"chunks_{vendor.lower()}" in chunk.upstream_task_ids
    assert dag.get_task("finish").trigger_rule == "all_done"
    params = ParamsDict({k: v for k, v in dag.params.items()})
    good = {"agency": "715100", "cut_off_date": "2023-01-01", "dry_run": True, "batch_size": 100}
    params.update(good)
    assert params.validate()["agency"] == "715100"
    # Issue 16 item 10: a malformed agency or date is refused at trigger time (whether the agency
    # exists and the date is in range is plan's to say: 0001-01-01 is a well-formed date).
    for bad in ({"agency": ""}, {"agency": "715100; DROP"}, {"agency": "DK-715100"}, {"agency": "71510"},
                {"cut_off_date": "2024-13-01"}, {"cut_off_date": "1.1.2024"}, {"cut_off_date": "2024-1-1"},
                {"batch_size": 0}, {"batch_size": 100000}, {"dry_run": "maybe"}):
        wrong = ParamsDict({k: v for k, v in dag.params.items()})
        with pytest.raises(Exception):   # noqa: B017 - Airflow's ParamValidationError
            wrong.update({**good, **bad})
            wrong.validate()
    floor = ParamsDict({k: v for k, v in dag.params.items()})
    floor.update({**good, "cut_off_date": "0001-01-01"})
    assert floor.validate()["cut_off_date"] == "0001-01-01"


def test_airflow_backfill_runs_of_the_transfer_dag_send_nothing_and_close_their_ledger_run(stores, monkeypatch):
    """`airflow backfill create` on debitor_transfer: transfer is by state (T1), so a run per past
    interval would repeat the newest run; such runs stop after the cut-off check (regular_run)."""
    from fbs_debitor.airflow import tasks as dag_tasks

    monkeypatch.setattr(dag_tasks, "_stores", lambda: stores)
    monkeypatch.setattr(stores, "dispose", lambda: None)
    run_id = ledger.start_run(stores.ledger, "transfer")
    assert dag_tasks.regular_run(run_id, "scheduled") is True and dag_tasks.regular_run(run_id, "manual") is True
    assert ledger.get_run(stores.ledger, run_id).status == "running"
    assert dag_tasks.regular_run(run_id, "backfill") is False
    assert ledger.get_run(stores.ledger, run_id).status == "success"


# --- issue 16: the run says which agency needs attention when one agency's work failed -------------------

OTHER = "726300"


def _send_every_municipality(dag_tasks, run_id: str, **kw) -> dict[str, int]:
    """build_and_send as the DAG maps it: once per municipality of every debtor system; the totals."""
    from collections import Counter

    from fbs_debitor.transfer.units import VENDORS

    total: Counter = Counter()
    for vendor in VENDORS:
        for unit in dag_tasks.municipalities(run_id, vendor):
            total.update(dag_tasks.build_and_send(run_id, unit, **kw))
    return dict(total)


def _two_agencies(stores) -> dict[str, int]:
    """An eligible fee at 715100 and one at 726300 (both KMD OPUS)."""
    with stores.fbs.connect() as conn:
        fr.agency(conn)
        fr.agency(conn, agency_id=OTHER, org_unit_uuid="6a2e9b63-1d49-4b54-8a6f-3c8b2d1e0f33")
        ids = {a: fr.liability(conn, fr.patron(conn, agency_id=a)["patron_id"], agency_id=a)["liability_id"]
               for a in ("715100", OTHER)}
        conn.commit()
    return ids


def _other_agency_fails(monkeypatch):
    """Delivery as the per-agency isolation makes it: 726300's batches hit an unexpected error and are
    counted (agency, "failed", <exception type>); every other agency's claims go as usual."""
    from fbs_debitor.claims import stream as claim_stream
    from fbs_debitor.delivery import outbox as delivery

    real = delivery.deliver_page

    def deliver_page(stores, client, run_id, page, batch_size, link=None):
        failing = [(row, built) for row, built in page.built if row.agency_id == OTHER and built.account]
        rest = claim_stream.Page(page.verdicts, [(r, b) for r, b in page.built if r.agency_id != OTHER])
        counts = real(stores, client, run_id, rest, batch_size, link)
        if failing:
            counts[(OTHER, "failed", "RuntimeError")] += len(failing)
        return counts

    monkeypatch.setattr(delivery, "deliver_page", deliver_page)


def test_issue16_run_transfer_ends_failed_after_every_agency_naming_the_agency_that_failed(stores, emu_db,
                                                                                          monkeypatch):
    """Issue 16 (one agency's error never stops the rest): 726300's delivery failed part-way; 715100's
    claim still went, the run's later steps all ran, and only then the run was recorded as failed,
    its error naming the agency and the exception type (and the CLI's summary says so first)."""
    from fbs_debitor.transfer.run import run_transfer
    from fbs_debitor.transfer.summary import format_run

    ids = _two_agencies(stores)
    _other_agency_fails(monkeypatch)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, debtor.client(emu.url) as client:
        run_id, counts = run_transfer(stores, client, data_quality=False)
    assert [c["fordring_id"] for c in emulator.claims(emu_db)] == [f"FBS-715100-{ids['715100']}"]
    run = ledger.get_run(stores.ledger, run_id)
    assert run.status == "failed" and run.finished_at is not None
    assert run.error.endswith("need attention, their work failed part-way (every other agency's work was done; "
                              "the log of the run has the error): agency 726300: RuntimeError")
    recorded = ledger.run_counts(stores.ledger, run_id)
    assert recorded[(OTHER, "failed", "RuntimeError")] == counts[(OTHER, "failed", "RuntimeError")] == 1
    assert recorded[("715100", "accepted", "-")] == 1                 # close_delivery ran after the failure
    text_ = format_run(run, recorded, stores.fbs)
    assert text_.splitlines()[1].startswith("NEEDS ATTENTION: the work of agency 726300 failed part-way (RuntimeError)")


def test_issue16_dag_close_run_and_failed_agencies_end_the_run_failed_naming_the_agency(stores, emu_db,
                                                                                       monkeypatch):
    """Issue 16, the DAG's path: build_and_send finishes every agency and returns; close_run closes the
    ledger run as failed naming 726300; the last task failed_agencies fails the Airflow run with the
    same words, and raises an operator alarm for 726300 (issue 20). A retry that delivers 726300
    leaves no stale 'failed' count: the run then succeeds and the alarm is resolved."""
    from airflow.sdk.exceptions import AirflowFailException

    from fbs_debitor.airflow import tasks as dag_tasks
    from fbs_debitor.core import alarms
    from fbs_debitor.transfer import run as transfer_run

    ids = _two_agencies(stores)
    monkeypatch.setattr(dag_tasks, "_stores", lambda: stores)
    monkeypatch.setattr(stores, "dispose", lambda: None)
    run_id = ledger.start_run(stores.ledger, "transfer")
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        monkeypatch.setattr(dag_tasks, "_clients", lambda _stores: debtor.client(emu.url))
        with monkeypatch.context() as m:
            _other_agency_fails(m)
            sent = _send_every_municipality(dag_tasks, run_id)
        assert sent["failed"] == 1 and sent["failed:RuntimeError"] == 1 and sent["eligible"] == 2
        dag_tasks.raise_staff_tasks(run_id)
        dag_tasks.close_run(run_id)
        run = ledger.get_run(stores.ledger, run_id)
        assert run.status == "failed" and run.error.endswith("agency 726300: RuntimeError")
        failures = transfer_run.agency_failures(ledger.run_counts(stores.ledger, run_id))
        assert failures == {OTHER: ["RuntimeError"]}
        with pytest.raises(AirflowFailException, match=r"need attention.*: agency 726300: RuntimeError$"):
            dag_tasks.failed_agencies(run_id)
        [alarm] = alarms.open_alarms(stores.ledger)
        assert (alarm.key, alarm.audience) == (f"failed_agency:{OTHER}", alarms.OPERATOR)
        # build_and_send again (a retry, or a clear in the UI): 726300's claim goes, the count is gone
        assert "failed" not in _send_every_municipality(dag_tasks, run_id, try_number=2)
        dag_tasks.close_run(run_id)
    assert ledger.get_run(stores.ledger, run_id).status == "success"
    assert transfer_run.agency_failures(ledger.run_counts(stores.ledger, run_id)) == {}
    assert dag_tasks.failed_agencies(run_id) == []
    assert alarms.open_alarms(stores.ledger) == []
    assert sorted(c["fordring_id"] for c in emulator.claims(emu_db)) == sorted(
        f"FBS-{a}-{lid}" for a, lid in ids.items())


def _metadata_url(db_urls, tmp_path, request) -> str | None:
    if not db_urls.fbs.startswith("postgresql"):
        return None
    from pgcluster import create_database

    return create_database(request.getfixturevalue("pg_admin_url"), f"airflow_{tmp_path.name[-20:]}".lower())


@pytest.mark.airflow
def test_transfer_dag_delivers_through_airflow_exactly_once_and_records_the_run(stores, db_urls, tmp_path, request):
    """T1/T4/T5 end to end through `airflow dags test` against the debtor emulator over HTTP: the
    eligible claim is delivered and recorded with the run's counts; a second run sends nothing."""
    with stores.fbs.connect() as conn:
        fr.agency(conn)
        p = fr.patron(conn)
        eligible = fr.liability(conn, p["patron_id"])                                  # eligible
        fr.liability(conn, p["patron_id"], created_at=dt.datetime(2025, 3, 3, 9, 0))    # T1
        g = fr.patron(conn, kind="group", responsible_patron_id=None)
        fr.liability(conn, g["patron_id"])                                             # T4
        c = fr.patron(conn, kind="company", cvr=None)
        fr.liability(conn, c["patron_id"])                                             # T5
        bad = fr.patron(conn, cpr="3102901234")                                         # T6: no such date
        fr.liability(conn, bad["patron_id"])
        conn.commit()

    env = airflow_env(tmp_path, db_urls, _metadata_url(db_urls, tmp_path, request))
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        env["AIRFLOW_CONN_SERVICEPLATFORMEN"] = debtor.connection_json(emu.url)
        state, output = dags_test(env, "debitor_transfer")
        assert state == "success", output[-4000:]
        run = ledger.get_run(stores.ledger, kind="transfer")
        requests = emu.request_count
        # Between the runs staff lower the sent fee (U1) and a new fee arrives: the next run sends
        # the new claim, then the write-down, in that order, and nothing else.
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE liability SET amount = 12.50 WHERE liability_id = :l"),
                         {"l": eligible["liability_id"]})
            new = fr.liability(conn, p["patron_id"])
        state2, output2 = dags_test(env, "debitor_transfer")
        assert state2 == "success", output2[-4000:]
        assert emu.request_count == requests + 2                    # one creation batch, one change batch
    held = {c["fordring_id"]: c for c in emulator.claims(emu_db)}
    assert sorted(held) == sorted(f"FBS-715100-{x['liability_id']}" for x in (eligible, new))
    assert held[f"FBS-715100-{eligible['liability_id']}"]["amount"] == Decimal("12.50")
    with stores.ledger.connect() as conn:
        sent = [r.message_key for r in conn.execute(text("SELECT message_key FROM event WHERE kind = 'sent' "
                                                         "ORDER BY occurred_at, seq"))]
    assert sent[-2:] == [f"{new['liability_id']}:1", f"{eligible['liability_id']}:2"]

    assert run is not None and run.status == "success" and run.airflow_run_id
    counts = ledger.run_counts(stores.ledger, run.run_id)
    assert counts[("715100", ELIGIBLE, "-")] == 1 and counts[("715100", "accepted", "-")] == 1
    assert counts[("715100", OUT_OF_SCOPE, "T1")] == 1
    assert counts[("715100", BLOCKED, "T4")] == 1 and counts[("715100", BLOCKED, "T5")] == 1
    assert counts[("715100", BLOCKED, "T6")] == 1
    with stores.ledger.connect() as conn:
        window = conn.execute(text("SELECT data_interval_start, data_interval_end FROM run WHERE run_id = :r"),
                              {"r": run.run_id}).one()
    assert window.data_interval_start is not None and window.data_interval_end is not None
    # No full CPR number anywhere in Airflow's output of the runs, task logs included; no payload.
    assert full_cpr_numbers(output + output2) == []
    assert "Debitorkonto>" not in output + output2
    second = ledger.get_run(stores.ledger, kind="transfer")
    counts2 = ledger.run_counts(stores.ledger, second.run_id)
    assert second.run_id != run.run_id and counts2[("715100", "already_sent", "-")] == 1
    assert counts2[("715100", "accepted", "-")] == 1
    assert counts2[("715100", "change_recorded", "write_down")] == counts2[("715100", "changes_accepted", "write_down")] == 1
    # Issue 18: each municipality's sending tasks are labelled by municipality in the grid (Airflow
    # stores the rendered label with the task instance; the UI's grid and its REST API show it).
    from sqlalchemy import create_engine

    metadata = create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with metadata.connect() as conn:
            labels = {(r.task_id, r.map_index, r.rendered_map_index) for r in conn.execute(text(
                "SELECT task_id, map_index, rendered_map_index FROM task_instance WHERE task_id LIKE 'send_%' AND map_index >= 0"))}
    finally:
        metadata.dispose()
    label = "29189404 Testby (KMD_OPUS)"
    assert labels == {(f"send_kmd_opus.{t}", 0, label)
                      for t in ("resend_unconfirmed", "build_and_send", "send_changes", "municipality_done")}


@pytest.mark.airflow
def test_issue20_C3_agency_with_age_limit_0_is_a_staff_alarm_and_the_run_stays_green(stores, db_urls, tmp_path,
                                                                                     request):
    """C3 and issue 20: the held agency is reported (a warning naming it and the setting, a staff
    alarm for the digest and the status page) while the other agency's work is done, and the run
    is green: staff must fix a setting in FBS, the integration did its work."""
    from fbs_debitor.core import alarms

    with stores.fbs.connect() as conn:
        fr.agency(conn)
        fr.agency(conn, agency_id="799900", age_limit=0)
        ok = fr.patron(conn)
        fr.liability(conn, ok["patron_id"])
        held = fr.patron(conn, agency_id="799900")
        fr.liability(conn, held["patron_id"], agency_id="799900")
        conn.commit()
    env = airflow_env(tmp_path, db_urls, _metadata_url(db_urls, tmp_path, request))
    with emulator.Emulator("KMD_OPUS", f"sqlite:///{tmp_path / 'emulator.sqlite'}") as emu:
        env["AIRFLOW_CONN_SERVICEPLATFORMEN"] = debtor.connection_json(emu.url)
        state, output = dags_test(env, "debitor_transfer")
    assert state == "success", output[-4000:]
    assert "agency 799900 held until the setting is fixed" in output and "Age limit 0" in output
    run = ledger.get_run(stores.ledger, kind="transfer")
    assert run.status == "success"                         # the other agency's work is done and recorded
    counts = ledger.run_counts(stores.ledger, run.run_id)
    assert counts[("715100", ELIGIBLE, "-")] == 1
    assert counts[("799900", BLOCKED, "C3")] == 1 and counts.get(("799900", ELIGIBLE, "-"), 0) == 0
    held_findings = [f for f in ledger.open_findings(stores.ledger) if f.rule == "C3"]
    assert [(f.agency_id, f.severity) for f in held_findings] == [("799900", "blocks_agency")]
    [alarm] = alarms.open_alarms(stores.ledger)
    assert (alarm.key, alarm.audience) == ("held_agency:799900", alarms.STAFF) and "Age limit 0" in alarm.message


@pytest.mark.airflow
def test_daily_report_dag_emails_each_branch_its_report_M4(stores, db_urls, tmp_path, request, smtp_server):
    """debitor_dq_report through Airflow: reports built from the ledger's findings and emailed via the
    Airflow connection smtp_default to a real SMTP server on loopback; no full CPR in any mail."""
    import email
    import json

    from fbs_debitor.transfer.run import run_assessment

    with stores.fbs.connect() as conn:
        fr.agency(conn)
        company = fr.patron(conn, kind="company", cvr=None)
        fr.liability(conn, company["patron_id"])                      # T5: a blocking finding
        fr.liability(conn, fr.patron(conn, cpr=fr.MOD11_FAIL_CPR)["patron_id"])   # I4: a warning
        conn.commit()
    run_assessment(stores)
    # A report shows what was open at the end of its day, and a run started before 06:00 Copenhagen
    # reports the day before (the last whole data interval): the findings were seen yesterday, so
    # either day's report holds them, whatever the hour the test runs at.
    with stores.ledger.begin() as conn:
        day_before = ledger.now() - dt.timedelta(days=1)
        conn.execute(text("UPDATE finding SET first_seen_at = :t, last_seen_at = :t"), {"t": day_before})
    collector, smtp = smtp_server
    env = airflow_env(tmp_path, db_urls, None if not db_urls.fbs.startswith("postgresql") else
                      __import__("pgcluster").create_database(request.getfixturevalue("pg_admin_url"),
                                                              f"airflow_{tmp_path.name[-20:]}".lower()))
    env["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps({
        "conn_type": "smtp", "host": smtp.host, "port": smtp.port,
        "extra": {"from_email": "fbs-debitor@kommune.example", "disable_ssl": True, "disable_tls": True}})
    env["FBS_DEBITOR_VAR"] = str(tmp_path / "var")
    env["FBS_DEBITOR_ALERT_EMAIL"] = "drift@kommune.example"
    state, output = dags_test(env, "debitor_dq_report")
    assert state == "success", output[-3000:]
    # the branch's report, then the integration team's digest (issue 20; no alarm open: it says none)
    assert [rcpts for _, rcpts, _ in collector.received] == [["hoved@715100.kommune.example"],
                                                             ["drift@kommune.example"]]
    digest_mail = email.message_from_bytes(collector.received[1][2])
    assert digest_mail["Subject"].startswith("fbs-debitor digest") and "0 operator alarm(s)" in digest_mail["Subject"]
    assert "agency 715100: 1" in digest_mail.get_payload(decode=True).decode()     # the T5 liability, blocked
    raw = collector.received[0][2]
    message = email.message_from_bytes(raw)
    html = next(p for p in message.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    assert "Virksomhed uden gyldigt CVR-nummer" in html and str(company["patron_id"]) in html
    assert any((p.get_filename() or "").startswith("datakvalitet-715100-01-") for p in message.walk())
    assert full_cpr_numbers(raw.decode("utf-8", "replace") + html) == [] and full_cpr_numbers(output) == []


@pytest.mark.airflow
def test_payments_dag_applies_the_files_writes_fbs_and_reconciles_through_airflow(stores, db_urls, tmp_path, request):
    """debitor_payments through `airflow dags test`: the emulator's nightly file and a truncated file
    in the inbox; the good one is applied to the ledger and FBS, the bad one quarantined (the run
    still succeeds), and the run's reconciliation report is written."""
    from fbs_debitor.sandbox import emulator_payments

    with stores.fbs.connect() as conn:
        fr.agency(conn)
        for _ in range(6):
            fr.liability(conn, fr.patron(conn)["patron_id"])
        conn.commit()
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, debtor.client(emu.url) as client:
        from fbs_debitor.transfer.run import run_transfer

        run_transfer(stores, client, data_quality=False)
    inbox = tmp_path / "inbox"
    files = emulator_payments.deliver(emu_db, inbox, dt.datetime(2026, 11, 20, 9, 0).astimezone(), {"715100": "KMD_OPUS"},
                                      seed=2, mix=emulator_payments.Mix(rate=3.0))
    assert len(files) == 1
    (inbox / "DA-broken.xml").write_bytes(files[0].read_bytes()[:200])
    env = airflow_env(tmp_path, db_urls, _metadata_url(db_urls, tmp_path, request))
    env.update(FBS_DEBITOR_PAYMENT_INBOX=str(inbox), FBS_DEBITOR_VAR=str(tmp_path / "var"))
    state, output = dags_test(env, "debitor_payments")
    assert state == "success", output[-4000:]
    run = ledger.get_run(stores.ledger, kind="payments")
    assert run.status == "success" and run.airflow_run_id
    counts = ledger.run_counts(stores.ledger, run.run_id)
    delivered = emulator_payments.movements(emu_db)
    applied = sum(n for (_a, c, _r), n in counts.items() if c == "movements_applied")
    held = sum(n for (_a, c, _r), n in counts.items() if c == "movements_held")
    assert applied + held == len(delivered) and held == 2                     # the two on unknown claims
    assert counts[("-", "files_applied", "-")] == 1 and counts[("-", "files_quarantined", "P_MALFORMED")] == 1
    with stores.fbs.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM payment")).scalar() == applied
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == [files[0].name]
    assert (tmp_path / "quarantine" / "DA-broken.xml").exists()
    assert (tmp_path / "var" / "reports" / "payments" / f"reconciliation-{run.run_id}.csv").exists()
    assert full_cpr_numbers(output) == []


@pytest.mark.airflow
def test_cut_off_moved_back_is_handed_from_the_transfer_dag_to_the_backfill_dag_T3(stores, db_urls, tmp_path, request):
    """T3 through Airflow: after the municipality moves the cut-off back, debitor_transfer sends
    nothing of the older range, records the move and triggers debitor_backfill (a queued run with
    the agency and date); debitor_backfill then sends the open liabilities of the range month by
    month - not the closed or sent-to-collection ones - and the hourly run takes the range over."""
    import json

    with stores.fbs.connect() as conn:
        fr.agency(conn)                                                                   # cut-off 2026-01-01
        p = fr.patron(conn)
        new = fr.liability(conn, p["patron_id"])
        old = [fr.liability(conn, p["patron_id"], kind="compensation", with_loan=False, acknowledged=True,
                            created_at=dt.datetime(2025, month, 10, 9, 0)) for month in (3, 5)]
        closed = fr.liability(conn, p["patron_id"], kind="compensation", with_loan=False, status="closed",
                              created_at=dt.datetime(2025, 4, 10, 9, 0))
        collection = fr.liability(conn, p["patron_id"], kind="compensation", with_loan=False,
                                  status="sent_to_collection", created_at=dt.datetime(2025, 4, 11, 9, 0))
        conn.commit()
    env = airflow_env(tmp_path, db_urls, _metadata_url(db_urls, tmp_path, request))
    env["FBS_DEBITOR_VAR"] = str(tmp_path / "var")
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        env["AIRFLOW_CONN_SERVICEPLATFORMEN"] = debtor.connection_json(emu.url)
        state, output = dags_test(env, "debitor_transfer")
        assert state == "success", output[-4000:]
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE agency SET cut_off_date = :d"), {"d": "2025-02-01"})
        state, output2 = dags_test(env, "debitor_transfer")
        assert state == "success", output2[-4000:]
        assert [c["fordring_id"] for c in emulator.claims(emu_db)] == [f"FBS-715100-{new['liability_id']}"]
        queued = run_airflow(env, "dags", "list-runs", "debitor_backfill", "-o", "json")
        runs = json.loads(next(line for line in queued.stdout.splitlines() if line.startswith("[{")))
        assert [r["state"] for r in runs] == ["queued"] and runs[0]["run_id"].startswith("detected__")
        conf = json.dumps({"agency": "715100", "cut_off_date": "2025-02-01", "batch_size": 2})
        state, output3 = dags_test(env, "debitor_backfill", runs[0]["logical_date"], "-c", conf)
        assert state == "success", output3[-4000:]
    held = sorted(c["fordring_id"] for c in emulator.claims(emu_db))
    assert held == sorted(f"FBS-715100-{x['liability_id']}" for x in (new, *old))
    assert f"FBS-715100-{closed['liability_id']}" not in held and f"FBS-715100-{collection['liability_id']}" not in held
    with stores.ledger.connect() as conn:
        backfill = conn.execute(text("SELECT status, requested_by, from_date FROM backfill")).one()
        chunks = conn.execute(text("SELECT COUNT(*) FROM backfill_chunk WHERE status = 'done'")).scalar()
        change = conn.execute(text("SELECT direction, old_cut_off, new_cut_off FROM cut_off_change")).one()
    assert (backfill.status, backfill.requested_by) == ("complete", "detected")
    assert chunks == 11                                             # February 2025 .. December 2025
    assert change.direction == "back"
    assert "map_index=10" in output3 or "2025-12" in output3        # one mapped task per month
    assert full_cpr_numbers(output + output2 + output3) == []


@pytest.mark.airflow
def test_item10_backfill_for_an_unknown_agency_fails_plan_once_and_finish_says_it_did_not_start(stores, db_urls,
                                                                                               tmp_path, request):
    """Issue 16 item 10 through `airflow dags test`: a trigger naming an agency FBS does not know
    fails plan at its first try (no retry, the run does not wait minutes for it) with the reason in
    the task's log; finish, which runs anyway, says the backfill did not start (no AttributeError),
    and the run ends failed. Nothing is recorded in the ledger."""
    import json

    with stores.fbs.connect() as conn:
        fr.agency(conn)
        conn.commit()
    env = airflow_env(tmp_path, db_urls, _metadata_url(db_urls, tmp_path, request))
    env["FBS_DEBITOR_VAR"] = str(tmp_path / "var")
    conf = json.dumps({"agency": "999999", "cut_off_date": "2024-01-01", "dry_run": True})
    state, output = dags_test(env, "debitor_backfill", "-c", conf)
    assert state == "failed", output[-4000:]
    assert "backfill not started: agency 999999 is not in FBS (agencies in FBS: 715100)" in output
    assert "the backfill did not start: task plan failed or was skipped" in output
    assert "AttributeError" not in output
    assert output.count("[DAG TEST] starting task_id=plan ") == 1            # one try: no retry
    assert not re.search(r"up_for_retry", output, re.IGNORECASE), output[-4000:]
    with stores.ledger.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM backfill")).scalar() == 0


def test_issue18_one_municipality_crashing_fails_only_its_own_task_and_the_run_names_it(stores, emu_db, monkeypatch):
    """Issue 18: the municipality is the unit of isolation. 726300 belongs to another municipality
    (at EG) than 715100 (KMD OPUS). Its whole sending task crashes (an error outside any agency's
    batches): that mapped task fails, and its municipality_done says so naming it; 715100's tasks
    finish and its claim is accepted; close_run closes the ledger run failed naming the municipality,
    and leaves its agency's findings open (the run decided nothing about it); failed_agencies fails
    the Airflow run with an operator alarm for 726300. The next run delivers it exactly once."""
    from airflow.sdk.exceptions import AirflowFailException

    from fbs_debitor.airflow import tasks as dag_tasks
    from fbs_debitor.core import alarms
    from fbs_debitor.transfer import run as transfer_run

    with stores.fbs.connect() as conn:
        fr.agency(conn)
        fr.agency(conn, agency_id=OTHER, municipality_cvr="29189633", debtor_vendor="EG",
                  org_unit_uuid="6a2e9b63-1d49-4b54-8a6f-3c8b2d1e0f33")
        ids = {a: fr.liability(conn, fr.patron(conn, agency_id=a)["patron_id"], agency_id=a)["liability_id"]
               for a in ("715100", OTHER)}
        conn.commit()
    from fbs_debitor.eligibility.rules import CHECK_CODES

    finding = ledger.Finding(check_code=CHECK_CODES["T4"], rule="T4", severity="blocks_liability",
                             agency_id=OTHER, subject="L999999", liability_id=999999, message="T4")
    ledger.upsert_findings(stores.ledger, ledger.start_run(stores.ledger, "transfer"), [finding], ledger.now())
    monkeypatch.setattr(dag_tasks, "_stores", lambda: stores)
    monkeypatch.setattr(stores, "dispose", lambda: None)
    run_id = ledger.start_run(stores.ledger, "transfer")
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        monkeypatch.setattr(dag_tasks, "_clients", lambda _stores: debtor.client(emu.url))
        [kmd] = dag_tasks.municipalities(run_id, "KMD_OPUS")
        [eg] = dag_tasks.municipalities(run_id, "EG")
        assert dag_tasks.municipalities(run_id, "PRISME") == []
        assert (kmd["agencies"], eg["agencies"]) == (["715100"], [OTHER])
        real = transfer_run.assess_eligibility

        def crash_at_eg(stores_, run_id_, *a, unit=None, **kw):
            if unit is not None and unit.vendor == "EG":
                raise RuntimeError("the unit's database connection dropped")
            return real(stores_, run_id_, *a, unit=unit, **kw)

        with monkeypatch.context() as m:
            m.setattr(transfer_run, "assess_eligibility", crash_at_eg)
            assert dag_tasks.build_and_send(run_id, kmd)["eligible"] == 1
            with pytest.raises(RuntimeError, match="dropped"):
                dag_tasks.build_and_send(run_id, eg)
        assert dag_tasks.municipality_done(run_id, kmd) == kmd["label"]
        with pytest.raises(AirflowFailException, match=rf"municipality {re.escape(eg['label'])}.*sending did not finish"):
            dag_tasks.municipality_done(run_id, eg)
        dag_tasks.raise_staff_tasks(run_id)
        dag_tasks.close_run(run_id)
        run = ledger.get_run(stores.ledger, run_id)
        assert run.status == "failed" and eg["label"] in run.error and kmd["label"] not in run.error
        assert [f.finding_key for f in ledger.unseen_findings(stores.ledger, run_id, [CHECK_CODES["T4"]])] == [
            finding.key]
        with pytest.raises(AirflowFailException, match=re.escape(eg["label"])):
            dag_tasks.failed_agencies(run_id)
        assert [(a.key, a.audience) for a in alarms.open_alarms(stores.ledger)] == [
            (f"failed_agency:{OTHER}", alarms.OPERATOR)]
        assert [c["fordring_id"] for c in emulator.claims(emu_db)] == [f"FBS-715100-{ids['715100']}"]
        # the next run: both municipalities' tasks finish, 726300's claim goes once, the alarm resolves
        again = ledger.start_run(stores.ledger, "transfer")
        for unit in (kmd, eg):
            dag_tasks.resend_unconfirmed(again, unit)
            dag_tasks.build_and_send(again, unit)
            dag_tasks.send_changes(again, unit)
            assert dag_tasks.municipality_done(again, unit) == unit["label"]
        dag_tasks.raise_staff_tasks(again)
        dag_tasks.close_run(again)
        assert ledger.get_run(stores.ledger, again).status == "success"
        assert dag_tasks.failed_agencies(again) == []
    assert alarms.open_alarms(stores.ledger) == []
    assert sorted(c["fordring_id"] for c in emulator.claims(emu_db)) == sorted(
        f"FBS-{a}-{lid}" for a, lid in ids.items())
