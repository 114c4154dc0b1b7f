-- Everything needed to build the SF1590 claims of the given liabilities. One row per liability:
--   b_*  the borrower (for a patron group: the group itself)
--   d_*  the debtor: the borrower, or a group's named responsible patron (T4)
--   g_*  the debtor's guardian (okonomisk ansvarlig) valid AT THE LIABILITY'S CREATION (C5):
--        valid_from <= created_at < valid_to (valid_to exclusive; NULL = still valid); where rows
--        overlap, the one that started last wins
--   gnow_patron_id  the debtor's guardian valid on :today, the day of sending: a minor's claim
--        without a guardian at creation raises a staff task only if there is none now either (C5)
--   loan and material for the claim's dates and texts (F2, F3, F6)
-- Only the ids in :ids (the page's eligible liabilities) are read.
SELECT l.liability_id, l.agency_id, l.kind, l.number, l.amount, l.status, l.created_at, l.acknowledged,
       l.auto_created, l.verified_at, COALESCE(o.item_number, l.item_number) AS item_number,
       a.age_limit, a.replacement_cpr_enabled, a.auto_compensation_acknowledged, a.debtor_vendor,
       a.org_unit_uuid, a.sender_system_uuid,
       b.patron_id AS b_patron_id, b.kind AS b_kind, b.branch_id AS b_branch_id,
       d.patron_id AS d_patron_id, d.kind AS d_kind, d.cpr AS d_cpr, d.replacement_cpr AS d_replacement_cpr,
       d.birth_date AS d_birth_date, d.name AS d_name, d.street AS d_street, d.postal_code AS d_postal_code,
       d.city AS d_city, d.cvr AS d_cvr, d.p_number AS d_p_number, d.ean AS d_ean,
       gp.patron_id AS g_patron_id, gp.cpr AS g_cpr, gp.replacement_cpr AS g_replacement_cpr,
       gp.birth_date AS g_birth_date, gp.name AS g_name, gp.street AS g_street,
       gp.postal_code AS g_postal_code, gp.city AS g_city,
       (SELECT MAX(gn.guardian_patron_id) FROM guardianship gn
         WHERE gn.child_patron_id = d.patron_id AND gn.valid_from <= :today
           AND (gn.valid_to IS NULL OR gn.valid_to > :today)) AS gnow_patron_id,
       o.loan_date, o.due_date, o.reloan_date,
       m.classification, m.author, m.title
-- @include queries/claim_source.sql
LEFT JOIN loan o ON o.loan_id = l.loan_id
LEFT JOIN material m ON m.item_number = COALESCE(o.item_number, l.item_number)
WHERE l.liability_id IN :ids
ORDER BY l.liability_id
