-- The liabilities of these agencies (:agencies) whose eligibility, claim or parties may have changed
-- after :since, by FBS's change markers (`updated_at`, see fbs/schema.sql); issue 19. A liability
-- is built from itself, its borrower (b), the debtor (d: the borrower, or a group's responsible
-- patron), the debtor's guardianship rows and the guardian patron (claim_source.sql), and its
-- agency (an agency marked changed is looked at whole: fbs_debitor.eligibility.delta). So:
--   the liability itself marked changed
--   a patron marked changed, a guardianship row of that patron marked changed, or that patron's
--   guardian marked changed (changed_patron), and the members of a group whose responsible
--   patron is such a patron (touched)
-- A NULL marker is "unknown": counted as changed. Each arm is an index range on updated_at, then
-- index lookups (ix_patron_responsible, ix_guardianship_guardian, ix_liability_patron).
-- The agency condition is written `agency_id || '' IN ...` on purpose: an expression no index
-- serves, so no planner walks an agency's whole liability index (ix_liability_agency_created)
-- instead of the changed rows; measured at 1M liabilities on SQLite, 2.65 s -> 0.01 s, same rows.
-- A guardian's change is found from the guardian's marker (ix_patron_updated) through
-- ix_guardianship_guardian, not by scanning every guardianship row.
WITH changed_patron AS (
    SELECT patron_id FROM patron
    WHERE updated_at > :since OR updated_at IS NULL
    UNION
    SELECT child_patron_id FROM guardianship
    WHERE updated_at > :since OR updated_at IS NULL
    UNION
    SELECT child_patron_id FROM guardianship
    WHERE guardian_patron_id IN (SELECT patron_id FROM patron WHERE updated_at > :since OR updated_at IS NULL)
), touched AS (
    SELECT patron_id FROM changed_patron
    UNION
    SELECT b.patron_id
    FROM changed_patron c
    JOIN patron b ON b.responsible_patron_id = c.patron_id
)
SELECT l.liability_id
FROM liability l
WHERE l.updated_at > :since
  AND l.agency_id || '' IN :agencies
UNION
SELECT l.liability_id
FROM touched t
JOIN liability l ON l.patron_id = t.patron_id
WHERE l.agency_id || '' IN :agencies
