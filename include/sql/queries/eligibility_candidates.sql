-- Liabilities in scope for transfer (T1, T3): open, created on or after the agency's cut-off date,
-- within the run's scope ({universe}, {t1}, {held}: filled by fbs_debitor.scope; the hourly run
-- leaves ranges waiting for debitor_backfill alone, a backfill chunk covers one agency's month).
-- One keyset page at a time (liability_id > :after_id, LIMIT :page_size), so a million liabilities
-- stream in flat memory. `gate` is the structural rule decided here, set-based:
--   C3  the agency's age limit is outside :min_age_limit..:max_age_limit (0 and 100 are seen in
--       real agencies): every classification would be wrong, so the whole agency is held
--   F1  the borrower the liability points to is not in FBS: there is no one to bill (a LEFT JOIN,
--       so the liability is never dropped from the run unseen)
--   T4  the borrower is a patron group: a group has no responsible party, so its liabilities are
--       never transferred, named responsible patron or not (corrected reading of 2026-11-30);
--       staff create the liability on a named patron of the group instead. Decided before T2: a
--       group's compensation would never go after verification either.
--   T2  compensation waiting for verification (agency verifies compensations, not verified yet)
--   -   no structural obstacle; identifiers (T5, T6) are checked next, with python-stdnum.
-- The debtor is the borrower (debtor_* are the borrower's columns: a group never gets this far).
SELECT l.liability_id,
       l.agency_id,
       l.patron_id,
       l.kind,
       p.branch_id,
       p.kind                    AS patron_kind,
       p.patron_id               AS debtor_patron_id,
       p.kind                    AS debtor_kind,
       p.cpr                     AS debtor_cpr,
       p.replacement_cpr         AS debtor_replacement_cpr,
       p.cvr                     AS debtor_cvr,
       a.replacement_cpr_enabled AS replacement_cpr_enabled,
       a.age_limit               AS age_limit,
       CASE
           WHEN a.age_limit < :min_age_limit OR a.age_limit > :max_age_limit THEN 'C3'
           WHEN p.patron_id IS NULL THEN 'F1'
           WHEN p.kind = 'group' THEN 'T4'
           WHEN l.kind = 'compensation' AND a.verify_compensations AND l.verified_at IS NULL THEN 'T2'
           ELSE '-'
       END                       AS gate
FROM liability l
JOIN agency a ON a.agency_id = l.agency_id
LEFT JOIN patron p ON p.patron_id = l.patron_id
WHERE l.status = 'open'
  AND {universe}
  AND {t1}
  AND NOT {held}
  AND l.liability_id > :after_id
ORDER BY l.liability_id
LIMIT :page_size
