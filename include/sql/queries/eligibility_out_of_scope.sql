-- Liabilities the run accounts for ({universe}) that it does not transfer, counted per agency and
-- the rule that keeps them out ({universe}, {t1}, {held}: filled by fbs_debitor.scope):
--   T1             created before the agency's cut-off date (stays payable at the library)
--   T3-closed      closed (never transferred, also when the cut-off moves back)
--   T3-collection  status "sent to collection" (Sendt til inddrivelse)
--   cancelled      cancelled in FBS before it was ever due for transfer: nothing is owed
--   T3-backfill    open and after the cut-off, but in a range that waits for debitor_backfill
--                  (the cut-off date was moved back; the backfill sends it, not the hourly run)
SELECT l.agency_id,
       CASE
           WHEN NOT {t1} THEN 'T1'
           WHEN l.status = 'closed' THEN 'T3-closed'
           WHEN l.status = 'sent_to_collection' THEN 'T3-collection'
           WHEN l.status <> 'open' THEN 'cancelled'
           ELSE 'T3-backfill'
       END      AS rule,
       COUNT(*) AS n
FROM liability l
CROSS JOIN agency a   -- SQLite: liability first, so a run's delta is read by its ids, not by walking each agency's index
WHERE a.agency_id = l.agency_id
  AND {universe}
  AND NOT (l.status = 'open' AND {t1} AND NOT {held})
GROUP BY 1, 2
