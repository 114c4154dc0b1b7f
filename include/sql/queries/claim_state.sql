-- The FBS state of sent liabilities that decides what the debtor system must be told (U1-U4):
-- status, amount, repayment mark, and the fields their debtor account's parties are built from
-- (the same d_* / g_* columns as claim_rows.sql, which builds the claims: the debtor is the borrower
-- or a group's named responsible patron, the guardian is the one valid AT THE LIABILITY'S
-- CREATION, C5). Narrow on purpose: run over every sent liability each hour.
SELECT l.liability_id, l.agency_id, l.number, l.patron_id, l.kind, l.status, l.amount, l.refund_requested_at, l.created_at,
       a.age_limit, a.replacement_cpr_enabled,
       b.kind AS b_kind, b.branch_id AS b_branch_id,
       d.patron_id AS d_patron_id, d.kind AS d_kind, d.cpr AS d_cpr, d.replacement_cpr AS d_replacement_cpr,
       d.birth_date AS d_birth_date, d.cvr AS d_cvr,
       gp.patron_id AS g_patron_id, gp.cpr AS g_cpr, gp.replacement_cpr AS g_replacement_cpr,
       gp.birth_date AS g_birth_date
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
WHERE l.liability_id IN :ids
