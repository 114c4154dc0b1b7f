-- Ledger 0003: delivery (exactly-once sending through the outbox).
--   error_code    the debtor system's code when it rejected the message (FejlKode), e.g. I3_..., M3_...;
--                 or fbs-debitor's own NOT_REBUILDABLE when an unconfirmed message cannot be sent
--                 again as it was (the liability changed agency, vanished, or no longer builds)
--   last_run_id   the run that last sent or answered the message: a run's sent / accepted /
--                 rejected / unconfirmed counts are read from the outbox by it (crash- and retry-proof)
--   task_id       the staff task raised in FBS about this message (a rejection, or a long delay), M1
ALTER TABLE outbox ADD COLUMN error_code VARCHAR(60);
ALTER TABLE outbox ADD COLUMN last_run_id VARCHAR(64);
ALTER TABLE outbox ADD COLUMN task_id VARCHAR(64);
CREATE INDEX ix_outbox_last_run ON outbox (last_run_id);
