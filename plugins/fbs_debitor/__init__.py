"""fbs-debitor: hands FBS library fees and compensations to the municipal debtor system (SF1590).

The package is usable without Airflow: the DAGs in ``dags/`` and the CLI (``python -m fbs_debitor``)
call the same functions.
"""

__version__ = "0.1.0"
