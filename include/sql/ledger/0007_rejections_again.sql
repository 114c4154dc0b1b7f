-- Ledger 0007: a rejected claim goes again, under the next generation of its FordringID, once its
-- cause is fixed (M1, M3, I3; delivery/rejections.py).
--
-- outbox.superseded_by     on a rejected creation (OpretDebitorkonto): the message key of the new
--                          claim recorded in its place (its data changed since the rejection, or an
--                          operator requeued it). NULL while the rejection stands. The link between
--                          the rejected and the new claim in the audit trail (M2).
-- outbox.task_resolved_at  when the staff task about this rejected message was resolved in FBS
--                          because the claim was sent again (written after FBS, so a crash in
--                          between is finished by the next run).
-- outbox.fingerprint       (unchanged column) on a rejected creation it is from now on the
--                          fingerprint of the content the debtor system rejected, which is what
--                          "its data changed since" is measured against.
-- ix_claim_state           the run looks for rejected claims every hour; they are few among many.
ALTER TABLE outbox ADD COLUMN superseded_by VARCHAR(100);
ALTER TABLE outbox ADD COLUMN task_resolved_at TIMESTAMP;
CREATE INDEX ix_claim_state ON claim (state, liability_id);
