"""The Airflow side, and the only part of the package that imports Airflow: the task functions
the DAG files call (``tasks``), Airflow Connections turned into the package's settings
(``connections``), and what tells a person (``notifications``).
"""
