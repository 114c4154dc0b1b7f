"""Alerts that reach a person: a failed run, a missed deadline (issue 20).

Every DAG names ``run_failed`` as its tasks' ``on_failure_callback`` (default_args: called once
a task has failed for good, not on a retry, in the task's own process, with the exception) and as
its own (called when the run fails: by the dag processor under the scheduler, by ``airflow dags
test`` in its own process; it also covers what no task reports, e.g. a run timeout). One failed
run sends ONE alert: whichever callback comes first claims the run's ``<dag>_failed`` OPERATOR
alarm in the ledger (``alarms.claim_for_run``, atomic), the others see it claimed and stay quiet.
If the ledger cannot be reached the alert goes anyway (two mails beat none). The next successful
run resolves the alarm (``run_succeeded``, the DAGs' ``on_success_callback``).

``deadline_missed`` is the DAGs' deadline callback (a ``DeadlineAlert`` with a ``SyncCallback``
naming it, which the executor runs): a run not finished in time. Under ``airflow dags test`` the
DAGs are parsed without their deadline: Airflow 3.3.2's ``dag.test()`` keeps the deadline as its
serialized dict where the scheduler keeps the id of its stored row, and so crashes at the end of
every SUCCESSFUL test run of a DAG with a deadline (``DeadlineAlertModel.get_by_id(<dict>)``:
"'dict' object has no attribute 'hex'"); ``dags test`` never queues a run, so the deadline
would not be evaluated there anyway ("deadline reference evaluated to None").

Where an alert goes:

* by email through the SMTP provider's ``SmtpNotifier`` and the Airflow connection
  ``smtp_default`` (host, port, login; extra ``from_email``, ``disable_ssl``, ``disable_tls``), to
  ``FBS_DEBITOR_ALERT_EMAIL`` (the integration team; unset: no mail, a warning in the log);
* to every notifier named in ``FBS_DEBITOR_ALERT_NOTIFIERS`` (dotted paths: an Airflow notifier
  instance, a notifier class that takes no arguments, or a function of the context), called with
  the callback's context plus ``fbs_debitor_alert`` = {"subject", "text"}.

A notifier that fails is logged and the others still go. Texts are ids and reasons only, CPR-shaped
numbers masked. Airflow imports this module when it parses a DAG with a deadline (it checks the
callback's path), which costs about a tenth of a second on top of ``airflow.sdk``.
"""

from __future__ import annotations

import html
import importlib
import logging
import uuid

from fbs_debitor.airflow import connections
from fbs_debitor.core import alarms, settings
from fbs_debitor.core.db import make_engine
from fbs_debitor.core.identity import mask_cprs_in

log = logging.getLogger(__name__)

SMTP_CONN_ID = "smtp_default"
PREFIX = "[fbs-debitor]"


def failed_kind(dag_id: str) -> str:
    """The alarm kind of a DAG's failed run, e.g. ``debitor_transfer_failed``."""
    return f"{dag_id}_failed"[:40]


# --- what an alert says -----------------------------------------------------------------------------

def _get(obj, name: str):
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _ids(context) -> tuple[str, str]:
    dag_run = context.get("dag_run")
    dag_id = _get(context.get("dag"), "dag_id") or _get(dag_run, "dag_id") or "?"
    run_id = context.get("run_id") or _get(dag_run, "run_id") or "?"
    return str(dag_id), str(run_id)


def _masked(text: str) -> str:
    return mask_cprs_in(text)


def failure_text(context) -> tuple[str, str]:
    """Subject and text of a failed-run alert, from a task's or the run's callback context."""
    dag_id, run_id = _ids(context)
    ti = context.get("ti") or context.get("task_instance")
    task_id = _get(ti, "task_id")
    exc = context.get("exception")
    reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else (
        str(exc) if exc else context.get("reason") or "see the task logs")
    where = f"task {task_id}" if task_id else "the run"
    subject = f"{PREFIX} {dag_id} failed: {where} (run {run_id})"
    text = "\n".join([
        f"The run {run_id} of {dag_id} failed at {where}.",
        f"Reason: {reason}",
        "",
        "A red run means the integration could not do its work (an outage, a crash, claims unconfirmed",
        "after every retry, a reconciliation difference); what staff must fix in FBS does not make it red.",
        "What to do per task: docs/operations.md, 'When is a run red'. The task's log in Airflow has the",
        "details. This is the one alert for this run; the next successful run resolves the alarm.",
    ])
    return _masked(subject)[:250], _masked(text)


def deadline_text(context, kwargs: dict) -> tuple[str, str]:
    dag_run = (context or {}).get("dag_run") or {}
    deadline = (context or {}).get("deadline") or {}
    dag_id = _get(dag_run, "dag_id") or kwargs.get("dag_id") or "?"
    run_id = _get(dag_run, "run_id") or "?"
    minutes = kwargs.get("minutes")
    subject = f"{PREFIX} {dag_id}: run {run_id} not finished in time"
    text = "\n".join([
        f"The run {run_id} of {dag_id} had not finished by its deadline "
        f"({_get(deadline, 'deadline_time') or '?'}{f', {minutes} minutes after it was queued' if minutes else ''}).",
        f"State then: {_get(dag_run, 'state') or '?'}; queued at {_get(dag_run, 'queued_at') or '?'}.",
        "",
        "A run that does not finish holds the next one back (one run at a time). Look at the running task",
        "in Airflow: a slow debtor system, a lock on a database, a stuck worker. docs/operations.md,",
        "'When is a run red', says more.",
    ])
    return _masked(subject)[:250], _masked(text)


# --- where an alert goes ------------------------------------------------------------------------------

def _html(text: str) -> str:
    # The notifier renders its fields as Jinja templates: raw keeps any braces in a reason as they are.
    return "{% raw %}<pre>" + html.escape(text).replace("{% endraw %}", "") + "</pre>{% endraw %}"


def _configured(path: str):
    module, _, name = path.rpartition(".")
    target = getattr(importlib.import_module(module), name)
    return target() if isinstance(target, type) else target


def notifiers(subject: str, text: str) -> list:
    """The notifiers for one alert: the email to FBS_DEBITOR_ALERT_EMAIL, then the configured ones."""
    out = []
    recipients = settings.alert_email()
    if recipients:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        out.append(SmtpNotifier(to=list(recipients), smtp_conn_id=SMTP_CONN_ID,
                                subject="{% raw %}" + subject + "{% endraw %}", html_content=_html(text)))
    else:
        log.warning("no alert email: FBS_DEBITOR_ALERT_EMAIL is not set")
    for path in settings.alert_notifiers():
        try:
            out.append(_configured(path))
        except Exception as exc:   # a misnamed notifier never stops the email
            log.error("alert notifier %s cannot be loaded: %s: %s", path, type(exc).__name__, exc)
    return out


def send(context, subject: str, text: str) -> int:
    """Call every notifier with the context; returns how many went without error."""
    context = dict(context or {})
    context["fbs_debitor_alert"] = {"subject": subject, "text": text}
    sent = 0
    for notifier in notifiers(subject, text):
        try:
            notifier(context)
            sent += 1
        except Exception as exc:   # one notifier's failure never stops the others
            log.error("alert %r not sent by %s: %s: %s", subject, type(notifier).__name__, type(exc).__name__, exc)
    log.warning("alert: %s (%d notifier(s))", subject, sent)
    return sent


# --- the callbacks ---------------------------------------------------------------------------------

def _ledger():
    return make_engine(connections.database_urls_for_task().ledger, settings.LEDGER_SCHEMA)


def _alarm_run_id(dag_id: str, run_id: str) -> str:
    return run_id if len(run_id) <= 64 else str(uuid.uuid5(uuid.NAMESPACE_URL, f"fbs-debitor/{dag_id}/{run_id}"))


def run_failed(context) -> bool:
    """A task's or the run's failure callback: the run's one alert. Returns whether it was sent
    by this call (False: another callback of the same run already said it)."""
    dag_id, run_id = _ids(context)
    subject, text = failure_text(context)
    alarm = alarms.Alarm(kind=failed_kind(dag_id), audience=alarms.OPERATOR, message=subject.removeprefix(PREFIX).strip())
    try:
        ledger = _ledger()
        try:
            first = alarms.claim_for_run(ledger, alarm, _alarm_run_id(dag_id, run_id))
        finally:
            ledger.dispose()
    except Exception as exc:   # the ledger may be what is down: alert rather than stay silent
        log.warning("ledger not reachable to mark the alert of run %s (%s: %s); alerting anyway", run_id,
                    type(exc).__name__, exc)
        first = True
    if not first:
        log.info("run %s of %s already alerted; not again", run_id, dag_id)
        return False
    send(context, subject, text)
    return True


def run_succeeded(context) -> None:
    """The DAG's success callback: a good run resolves the DAG's failed-run alarm."""
    dag_id, _run_id = _ids(context)
    try:
        ledger = _ledger()
        try:
            resolved = alarms.resolve_unseen(ledger, [failed_kind(dag_id)], [])
        finally:
            ledger.dispose()
    except Exception as exc:
        log.warning("could not resolve the failed-run alarm of %s: %s: %s", dag_id, type(exc).__name__, exc)
        return
    if resolved:
        log.info("resolved: %s", ", ".join(resolved))


def deadline_missed(context=None, **kwargs) -> int:
    """The DAGs' deadline callback: one alert that the run is not finished in time."""
    subject, text = deadline_text(context, kwargs)
    return send(context, subject, text)
