"""fbs-debitor: hands FBS library fees and compensations to the municipal debtor system (SF1590).

One subpackage per stage of the pipeline, each building only on those above it in this list:

    core         settings, the two databases, migrations, the ledger, identifiers (I1-I4)
    eligibility  what may go and from when (T1-T6, the C3 hold), a run's scope, cut-off moves (T3)
    claims       a liability as an SF1590 claim (C1-C6, F1-F6, M3), validated batches, FBS write-back
    quality      data-quality checks with Great Expectations, the staff reports and their email (M4)
    delivery     the Serviceplatformen client and the outbox: exactly once; staff tasks (M1)
    changes      claims already sent kept true (U1-U4), a liability's trail (M2), reconciliation
    payments     payments and write-offs back (P1, P2)
    transfer     the hourly run's steps, the dry run, the printed summary
    backfill     a cut-off moved back: the older range month by month (T3)
    airflow      the Airflow side: task bodies, Connections, loud failures (the only Airflow imports)
    sandbox      generator, emulators, simulators for the demo and tests (never imported by the above)

The package is usable without Airflow: the DAGs in ``dags/`` and the CLI (``python -m fbs_debitor``)
call the same functions.
"""

__version__ = "0.1.0"
