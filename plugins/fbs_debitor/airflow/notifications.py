"""What tells a person: the checks that fail a DAG run loudly, last, after everything else has run,
so that the run is red in the Airflow UI (and alerts fire) while no agency or file was held back
by another's problem."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException

from fbs_debitor.transfer.run import failure_message


def held_agencies(dq: dict) -> list[str]:
    """Fail when an agency's run is held because its age limit is out of range (C3)."""
    held = dq.get("blocked_agencies") or {}
    if held:
        reasons = "; ".join(f"agency {a}: {r}" for a, r in sorted(held.items()))
        raise AirflowFailException(f"{len(held)} agency run(s) held until the setting is fixed: {reasons}")
    return []


def failed_agencies(failures: dict[str, list[str]]) -> list[str]:
    """Fail when an agency's work failed part-way (an unexpected error in its batches) while every
    other agency's went on: the message names the agencies that need attention."""
    if failures:
        raise AirflowFailException(failure_message(failures))
    return []


def undelivered(delivered: dict[str, int]) -> int:
    """Fail when claims of this run are still unconfirmed: the next run sends them again under the
    same keys, but the integration team should know the debtor side is failing."""
    n, changes = delivered.get("unconfirmed", 0), delivered.get("changes_unconfirmed", 0)
    if n or changes:
        raise AirflowFailException(f"{n} claim(s) and {changes} change(s) got no answer from the debtor system after "
                                   "every retry; they are kept in the outbox and sent again under the same keys next run")
    return 0


def payment_differences(result: dict[str, int]) -> int:
    """Fail when the payments reconciliation found differences; the report names each one."""
    if result.get("differences"):
        raise AirflowFailException(f"payments reconciliation: {result['differences']} difference(s); see "
                                   "var/reports/payments/reconciliation-<run>.csv")
    return 0
