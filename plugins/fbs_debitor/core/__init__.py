"""Infrastructure every stage stands on: settings, the two databases, migrations, the ledger
(runs, counts, findings, the audit trail's events, a claim's settlement) and the identifier rules
I1-I4 with CPR masking.

Nothing in ``core`` imports another stage. Dialect differences between PostgreSQL and SQLite live
in ``core.db`` and nowhere else.
"""
