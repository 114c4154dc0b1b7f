-- Status page: the newest run of each kind (ledger), with the Airflow run it belongs to. A
-- 'manual' run (python -m fbs_debitor transfer / assess, outside Airflow) counts as a transfer
-- run: ``panel`` is the kind the page shows it under, ``kind`` the ledger's own.
SELECT CASE WHEN r.kind = 'manual' THEN 'transfer' ELSE r.kind END AS panel,
       r.run_id, r.kind, r.status, r.started_at, r.finished_at, r.airflow_dag_id, r.airflow_run_id, r.error
FROM run r
WHERE r.run_id = (SELECT n.run_id FROM run n
                  WHERE CASE WHEN n.kind = 'manual' THEN 'transfer' ELSE n.kind END
                      = CASE WHEN r.kind = 'manual' THEN 'transfer' ELSE r.kind END
                  ORDER BY n.started_at DESC, n.run_id DESC LIMIT 1)
