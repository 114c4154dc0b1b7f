-- The liability with its agency, borrower (b), debtor (d) and guardian (g, gp), shared by
-- claim_rows.sql (building claims) and claim_state.sql (comparing sent claims with FBS), so both
-- name the same parties (included with "-- @include queries/claim_source.sql"):
--   d  the debtor: the borrower, or a group's named responsible patron (T4)
--   g  the debtor's guardian (okonomisk ansvarlig) valid AT THE LIABILITY'S CREATION (C5):
--      valid_from <= created_at < valid_to (valid_to exclusive; NULL = still valid); where rows
--      overlap, the one that started last wins
FROM liability l
JOIN agency a ON a.agency_id = l.agency_id
JOIN patron b ON b.patron_id = l.patron_id
LEFT JOIN patron d
       ON d.patron_id = CASE WHEN b.kind = 'group' THEN b.responsible_patron_id ELSE b.patron_id END
LEFT JOIN guardianship g
       ON g.child_patron_id = d.patron_id
      AND g.valid_from = (SELECT MAX(g2.valid_from) FROM guardianship g2
                          WHERE g2.child_patron_id = d.patron_id
                            AND g2.valid_from <= l.created_at
                            AND (g2.valid_to IS NULL OR g2.valid_to > l.created_at))
LEFT JOIN patron gp ON gp.patron_id = g.guardian_patron_id
