-- The FBS state of sent liabilities that decides what the debtor system must be told (U1-U4):
-- status, amount, repayment mark, and the fields their debtor account's parties are built from
-- (the same d_* / g_* columns as claim_rows.sql, which builds the claims, from the same joins in
-- claim_source.sql). Narrow on purpose: run over every sent liability each hour.
SELECT l.liability_id, l.agency_id, l.number, l.patron_id, l.kind, l.status, l.amount, l.refund_requested_at, l.created_at,
       a.age_limit, a.replacement_cpr_enabled,
       b.kind AS b_kind, b.branch_id AS b_branch_id,
       d.patron_id AS d_patron_id, d.kind AS d_kind, d.cpr AS d_cpr, d.replacement_cpr AS d_replacement_cpr,
       d.birth_date AS d_birth_date, d.cvr AS d_cvr,
       gp.patron_id AS g_patron_id, gp.cpr AS g_cpr, gp.replacement_cpr AS g_replacement_cpr,
       gp.birth_date AS g_birth_date
-- @include queries/claim_source.sql
WHERE l.liability_id IN :ids
