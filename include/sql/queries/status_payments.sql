-- Status page: payments and write-offs from the debtor system per agency (ledger ``movement``;
-- '-' for movements whose claim is not known). Today's: received (arrived in a file), applied
-- (booked, with the amounts paid and written off); now, whatever the day: held for review (each a
-- staff task) and applied but not yet written to FBS (a reconciliation difference while it lasts).
-- :day_start / :day_end: today's Copenhagen midnights, naive like the ledger's timestamps.
SELECT COALESCE(agency_id, '-') AS agency_id,
       SUM(CASE WHEN received_at >= :day_start AND received_at < :day_end THEN 1 ELSE 0 END) AS received,
       SUM(CASE WHEN state = 'applied' AND decided_at >= :day_start AND decided_at < :day_end
                THEN 1 ELSE 0 END) AS applied,
       SUM(CASE WHEN state = 'applied' AND kind = 'payment' AND decided_at >= :day_start AND decided_at < :day_end
                THEN amount ELSE 0 END) AS paid,
       SUM(CASE WHEN state = 'applied' AND kind = 'write_off' AND decided_at >= :day_start
                AND decided_at < :day_end THEN amount ELSE 0 END) AS written_off,
       SUM(CASE WHEN state = 'held' THEN 1 ELSE 0 END) AS held,
       SUM(CASE WHEN state = 'applied' AND written_back_at IS NULL THEN 1 ELSE 0 END) AS unwritten
FROM movement
WHERE (received_at >= :day_start AND received_at < :day_end)
   OR (decided_at >= :day_start AND decided_at < :day_end)
   OR state = 'held'
   OR (state = 'applied' AND written_back_at IS NULL)
GROUP BY COALESCE(agency_id, '-')
