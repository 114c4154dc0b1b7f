-- The balance and settlement of claims (P2), from what the debtor system holds (debtor_amount,
-- debtor_status) and the sums of the applied movements. The one definition, run for the claims
-- whose sums (payments run) or amount (change detection) just changed; :ids is expanded.
--   unpaid       nothing paid or written off yet
--   partly_paid  something paid or written off, a balance left
--   paid         balance 0 by payments
--   written_off  balance 0, at least part written off
--   repaid       money paid back to the citizen (U3)
--   cancelled    cancelled after something was paid or written off (the debtor system settles it)
--   overpaid     more paid or written off than the claim now holds (a write-down after payments):
--                shown by reconciliation for staff to settle
-- ROUND: SQLite keeps NUMERIC as floating point.
UPDATE claim SET
    balance = CASE WHEN debtor_status = 'cancelled' THEN 0
                   ELSE ROUND(COALESCE(debtor_amount, 0) - paid_amount - written_off_amount, 2) END,
    settlement = CASE
        WHEN repaid_amount > 0 THEN 'repaid'
        WHEN paid_amount = 0 AND written_off_amount = 0 THEN 'unpaid'
        WHEN debtor_status = 'cancelled' THEN 'cancelled'
        WHEN ROUND(COALESCE(debtor_amount, 0) - paid_amount - written_off_amount, 2) < 0 THEN 'overpaid'
        WHEN ROUND(COALESCE(debtor_amount, 0) - paid_amount - written_off_amount, 2) > 0 THEN 'partly_paid'
        WHEN written_off_amount > 0 THEN 'written_off'
        ELSE 'paid'
    END
WHERE liability_id IN :ids
