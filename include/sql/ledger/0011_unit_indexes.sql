-- Ledger 0011: indexes for the municipality as the unit of isolation (issue 18).
--
-- The hourly run's sending steps run once per municipality, each over its own agencies' claims:
-- change detection and requeueing read the accepted or rejected claims of a few agencies in
-- liability order, and the resend reads their unconfirmed outbox messages. Without these, each of
-- 98 municipalities' tasks would walk every municipality's claims.
--
-- ix_claim_agency_state   claims of one unit, by state, in liability order
CREATE INDEX ix_claim_agency_state ON claim (agency_id, state, liability_id);
