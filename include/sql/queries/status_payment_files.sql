-- Status page: payment files received today by their state (applied, quarantined), ledger.
SELECT state, COUNT(*) AS n
FROM payment_file
WHERE received_at >= :day_start AND received_at < :day_end
GROUP BY state
