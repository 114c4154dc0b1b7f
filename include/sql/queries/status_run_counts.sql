-- Status page: one run's counts per agency and category (and the rule, for held agencies and
-- the failures' error types), summed: what the run held back, sent and failed at (ledger).
SELECT agency_id, category, rule, SUM(n) AS n
FROM run_count
WHERE run_id = :run_id
GROUP BY agency_id, category, rule
