"""The status page's figures: per municipality, what went today (``overview``), as HTML (``page``)
and as plain text (``overview.format_overview``). Airflow-free: ``fbs_debitor.airflow.status_page``
serves it inside the Airflow UI."""
