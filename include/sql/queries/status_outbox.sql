-- Status page: messages to the debtor system per agency, today (ledger). ``what`` is 'claim' for a
-- new claim (OpretDebitorkonto, change_kind 'create'; NULL before ledger 0004) and 'change' for a
-- change to a claim already sent (U1-U4). Today's: recorded (created), sent (last transmitted),
-- accepted and rejected (answered); unconfirmed: waiting for an answer now, whatever the day.
-- :day_start / :day_end: today's Copenhagen midnights, naive like the ledger's timestamps.
SELECT c.agency_id,
       CASE WHEN o.change_kind IS NULL OR o.change_kind = 'create' THEN 'claim' ELSE 'change' END AS what,
       SUM(CASE WHEN o.created_at >= :day_start AND o.created_at < :day_end THEN 1 ELSE 0 END) AS recorded,
       SUM(CASE WHEN o.sent_at >= :day_start AND o.sent_at < :day_end THEN 1 ELSE 0 END) AS sent,
       SUM(CASE WHEN o.state = 'accepted' AND o.answered_at >= :day_start AND o.answered_at < :day_end
                THEN 1 ELSE 0 END) AS accepted,
       SUM(CASE WHEN o.state = 'rejected' AND o.answered_at >= :day_start AND o.answered_at < :day_end
                THEN 1 ELSE 0 END) AS rejected,
       SUM(CASE WHEN o.state IN ('pending', 'sent') THEN 1 ELSE 0 END) AS unconfirmed
FROM outbox o
JOIN claim c ON c.liability_id = o.liability_id
WHERE (o.created_at >= :day_start AND o.created_at < :day_end)
   OR (o.sent_at >= :day_start AND o.sent_at < :day_end)
   OR (o.answered_at >= :day_start AND o.answered_at < :day_end)
   OR o.state IN ('pending', 'sent')
GROUP BY c.agency_id,
         CASE WHEN o.change_kind IS NULL OR o.change_kind = 'create' THEN 'claim' ELSE 'change' END
