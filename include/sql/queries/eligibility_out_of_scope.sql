-- Liabilities that are not for transfer, counted per agency and the rule that keeps them out:
--   T1             created before the agency's cut-off date (stays payable at the library)
--   T3-closed      closed (never transferred, also when the cut-off moves back)
--   T3-collection  status "sent to collection" (Sendt til inddrivelse)
--   cancelled      cancelled in FBS before it was ever due for transfer: nothing is owed
SELECT l.agency_id,
       CASE
           WHEN l.created_at < a.cut_off_date THEN 'T1'
           WHEN l.status = 'closed' THEN 'T3-closed'
           WHEN l.status = 'sent_to_collection' THEN 'T3-collection'
           ELSE 'cancelled'
       END      AS rule,
       COUNT(*) AS n
FROM liability l
JOIN agency a ON a.agency_id = l.agency_id
WHERE NOT (l.status = 'open' AND l.created_at >= a.cut_off_date)
GROUP BY l.agency_id,
         CASE
             WHEN l.created_at < a.cut_off_date THEN 'T1'
             WHEN l.status = 'closed' THEN 'T3-closed'
             WHEN l.status = 'sent_to_collection' THEN 'T3-collection'
             ELSE 'cancelled'
         END
