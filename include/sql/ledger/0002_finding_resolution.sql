-- Ledger 0002: why a finding was resolved.
--   fixed       the data was corrected (the liability is still waiting to go, or it is an agency check)
--   left_batch  the liability is no longer waiting to go (sent, closed, cancelled, sent to collection,
--               or moved before the cut-off): nothing for staff to fix, and NOT shown as "fixed"
-- NULL on findings resolved before this migration (read as "fixed").
ALTER TABLE finding ADD COLUMN resolution VARCHAR(20);
