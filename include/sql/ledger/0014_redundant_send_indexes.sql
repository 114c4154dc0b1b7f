-- Ledger 0014: two indexes every claim sent paid for and no query needs (issue 19).
--
-- Each claim sent writes its claim and outbox rows and moves both through pending, sent and
-- accepted; every index on a column that changes is written again at each step. Two of them are
-- the leading columns of a later index, which serves every query they served:
--
-- ix_outbox_state (state)     ix_outbox_open (state, liability_id), 0004
-- ix_claim_agency (agency_id) ix_claim_agency_state (agency_id, state, liability_id), 0011
DROP INDEX ix_outbox_state;
DROP INDEX ix_claim_agency;
