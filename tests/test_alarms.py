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
