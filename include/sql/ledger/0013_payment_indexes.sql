-- Ledger 0013: indexes for payments applied and reconciled set-based (issue 19).
--
-- A payment file's movements name FordringIDs; the payments run looks each one up in the claims and
-- in the outbox (an earlier FordringID of a claim replaced at an increase, U1, is only there), once
-- to sort the file to its municipality and once to apply it. The reconciliation counts, per claim,
-- its movements that are not applied. The write-back reads the movements not yet written to FBS in
-- movement order, page by page; each run looks at the held movements again. Without these, each
-- file would read the whole outbox, and with ix_movement_state (state, written_back_at) SQLite's
-- planner took that index for every "state = 'applied'" query and sorted all applied movements
-- for each page of the reconciliation (and looked up movements by id through it): a million
-- movements took quadratic time. The two partial indexes hold only the rows they are for.
--
-- ix_outbox_fordring     the outbox messages of a FordringID (U1's earlier ones included)
-- ix_movement_fordring   the movements of a FordringID, by state
-- ix_movement_unwritten  movements not yet written to FBS (or their hold task raised), by state, in
--                        movement order (partial: written_back_at IS NULL)
-- ix_movement_held       held movements by reason and agency, looked at again each run (partial)
-- ix_movement_state      dropped: replaced by the two partial indexes
CREATE INDEX ix_outbox_fordring ON outbox (fordring_id);
CREATE INDEX ix_movement_fordring ON movement (fordring_id, state);
CREATE INDEX ix_movement_unwritten ON movement (state, movement_id) WHERE written_back_at IS NULL;
CREATE INDEX ix_movement_held ON movement (hold_reason, agency_id) WHERE state = 'held';
DROP INDEX ix_movement_state;
