-- Where each of these liabilities stands against a run's scope ({universe}, {t1}, {held},
-- {after_cut_off}: filled by fbs_debitor.scope), to resolve the findings the run did not see again:
--   in_universe  the run accounts for it (hourly: every liability; a chunk: its agency and month)
--   due          open, on or after the cut-off, and not left to a backfill: the run looked at it
--   waiting      open and on or after FBS's cut-off date: someone (this run or a backfill) will
SELECT l.liability_id,
       CASE WHEN {universe} THEN 1 ELSE 0 END                                            AS in_universe,
       CASE WHEN l.status = 'open' AND {t1} AND NOT {held} THEN 1 ELSE 0 END               AS due,
       CASE WHEN l.status = 'open' AND {after_cut_off} THEN 1 ELSE 0 END                AS waiting
FROM liability l
JOIN agency a ON a.agency_id = l.agency_id
WHERE l.liability_id IN :ids
