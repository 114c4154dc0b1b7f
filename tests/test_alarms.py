"""The alarm store (issue 20 item 1/2): a condition staff or the integration team must act on is
one alarm while it lasts, however many runs see it; resolved when a run no longer sees it; said by
the digest once as new. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from fbs_debitor.core import alarms
from fbs_debitor.core.alarms import Alarm

T0 = dt.datetime(2026, 11, 30, 8, 0, 0)


def held(agency: str, message: str = "age limit 12-21 outside 15-21") -> Alarm:
    return Alarm(kind="held_agency", audience=alarms.STAFF, message=message, agency_id=agency)


def test_issue20_one_alarm_per_condition_however_many_runs_see_it(stores):
    for hour in range(3):
        alarms.raise_alarms(stores.ledger, f"run-{hour}", [held("715100")], at=T0 + dt.timedelta(hours=hour))
    [a] = alarms.open_alarms(stores.ledger)
    assert (a.key, a.occurrences, a.first_seen_at, a.last_seen_at) == (
        "held_agency:715100", 3, T0, T0 + dt.timedelta(hours=2))
    assert a.first_run_id == "run-0" and a.last_run_id == "run-2" and a.is_new


def test_issue20_a_retried_task_does_not_count_the_run_twice(stores):
    alarms.raise_alarms(stores.ledger, "run-1", [held("715100")], at=T0)
    alarms.raise_alarms(stores.ledger, "run-1", [held("715100")], at=T0)
    assert alarms.open_alarms(stores.ledger)[0].occurrences == 1


def test_issue20_resolved_when_no_longer_seen_and_new_again_when_it_comes_back(stores):
    alarms.raise_alarms(stores.ledger, "r1", [held("715100"), held("726300")], at=T0)
    alarms.mark_notified(stores.ledger, alarms.open_alarms(stores.ledger), at=T0)
    gone = alarms.resolve_unseen(stores.ledger, ["held_agency"], [held("726300")], at=T0 + dt.timedelta(hours=1))
    assert gone == ["held_agency:715100"]
    assert [a.agency_id for a in alarms.open_alarms(stores.ledger)] == ["726300"]
    assert not alarms.open_alarms(stores.ledger)[0].is_new
    assert [a.key for a in alarms.resolved_since(stores.ledger, T0)] == ["held_agency:715100"]
    alarms.raise_alarms(stores.ledger, "r3", [held("715100")], at=T0 + dt.timedelta(hours=2))
    back = alarms.open_alarms(stores.ledger, agency_id="715100")[0]
    assert back.is_new and back.occurrences == 1 and back.first_seen_at == T0 + dt.timedelta(hours=2)


def test_issue20_resolve_only_within_the_agencies_a_run_looked_at(stores):
    alarms.raise_alarms(stores.ledger, "r1", [held("715100"), held("726300")], at=T0)
    assert alarms.resolve_unseen(stores.ledger, ["held_agency"], [], agencies=["726300"]) == ["held_agency:726300"]
    assert [a.agency_id for a in alarms.open_alarms(stores.ledger)] == ["715100"]


def test_issue20_operator_alarms_first_and_no_cpr_stored(stores):
    alarms.raise_alarms(stores.ledger, "r1", [
        held("715100", "patron 0101901234 has no guardian"),
        Alarm(kind="unconfirmed", audience=alarms.OPERATOR, message="3 claims unconfirmed")], at=T0)
    first, second = alarms.open_alarms(stores.ledger)
    assert first.audience == alarms.OPERATOR and first.agency_id is None
    assert "0101901234" not in second.message and "010190-****" in second.message


def test_issue20_bad_alarm_refused():
    with pytest.raises(ValueError):
        Alarm(kind="held_agency", audience="everyone", message="x")


def failed_run(message: str = "debitor_transfer failed: task undelivered") -> Alarm:
    return Alarm(kind="debitor_transfer_failed", audience=alarms.OPERATOR, message=message)


def test_issue20_claim_for_run_is_true_once_per_run_so_a_failed_run_alerts_once(stores):
    """A failed run's task callback and run callback both claim the run's alarm: only the first
    gets True (one alert); the next failed run claims it again; after a good run resolved it, a
    failed run opens it anew (new for the digest)."""
    assert alarms.claim_for_run(stores.ledger, failed_run(), "run-1", at=T0) is True
    assert alarms.claim_for_run(stores.ledger, failed_run("again"), "run-1", at=T0) is False
    assert alarms.claim_for_run(stores.ledger, failed_run(), "run-2", at=T0 + dt.timedelta(hours=1)) is True
    [a] = alarms.open_alarms(stores.ledger)
    assert (a.occurrences, a.first_run_id, a.last_run_id, a.first_seen_at) == (2, "run-1", "run-2", T0)
    alarms.mark_notified(stores.ledger, [a], at=T0 + dt.timedelta(hours=1))
    alarms.resolve_unseen(stores.ledger, ["debitor_transfer_failed"], [], at=T0 + dt.timedelta(hours=2))
    assert alarms.claim_for_run(stores.ledger, failed_run(), "run-4", at=T0 + dt.timedelta(hours=3)) is True
    [b] = alarms.open_alarms(stores.ledger)
    assert (b.occurrences, b.first_run_id, b.is_new, b.first_seen_at) == (1, "run-4", True, T0 + dt.timedelta(hours=3))


def test_issue20_observe_raises_what_a_run_saw_and_resolves_what_it_no_longer_sees(stores):
    found = {"715100": "held (C3)", "726300": "held (C3)"}
    assert alarms.observe(stores.ledger, "r1", "held_agency", alarms.STAFF, found, at=T0) == []
    assert alarms.observe(stores.ledger, "r2", "held_agency", alarms.STAFF, {"726300": "held (C3)"},
                          at=T0 + dt.timedelta(hours=1)) == ["held_agency:715100"]
    assert [a.agency_id for a in alarms.open_alarms(stores.ledger)] == ["726300"]


def test_issue20_a_resolved_alarm_is_unsaid_until_a_digest_marks_it(stores):
    alarms.raise_alarms(stores.ledger, "r1", [held("715100")], at=T0)
    alarms.mark_notified(stores.ledger, alarms.open_alarms(stores.ledger), at=T0 + dt.timedelta(hours=1))
    assert alarms.resolved_unsaid(stores.ledger) == []
    alarms.resolve_unseen(stores.ledger, ["held_agency"], [], at=T0 + dt.timedelta(hours=2))
    [r] = alarms.resolved_unsaid(stores.ledger)
    assert r.key == "held_agency:715100" and r.resolved_at == T0 + dt.timedelta(hours=2)
    alarms.mark_notified(stores.ledger, [r], at=T0 + dt.timedelta(hours=3))
    assert alarms.resolved_unsaid(stores.ledger) == []
