-- Status page: how many runs of each kind started today, by their state (ledger); 'manual' runs
-- (outside Airflow) count as transfer runs, as in status_runs.sql.
-- :day_start / :day_end: today's Copenhagen midnights, naive like the ledger's timestamps.
SELECT CASE WHEN kind = 'manual' THEN 'transfer' ELSE kind END AS panel, status, COUNT(*) AS n
FROM run
WHERE started_at >= :day_start AND started_at < :day_end
GROUP BY CASE WHEN kind = 'manual' THEN 'transfer' ELSE kind END, status
