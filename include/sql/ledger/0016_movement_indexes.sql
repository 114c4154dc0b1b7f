-- Ledger 0016: the movement table's indexes as a million payment movements need them (issue 19).
--
-- Every movement applied writes one entry in each index of the movement table; the payments run
-- pays for each index at every insert, whether a query needs it or not.
--
-- ix_movement_file      dropped: no query looks movements up by their file (the run's counts join
--                       the file by its key, payment_file's primary key); it only served deleting a
--                       payment_file row, which nothing does. Its key, a 64-character SHA-256, made
--                       it one of the largest indexes of the ledger.
-- ix_movement_hold_task only the movements that have a hold task (partial): it is looked up by
--                       task (``hold_task IN (...)``), and nearly every movement has none.
-- ix_movement_run       the movements of a run: the run's counts (``payment_counts``, after each
--                       municipality's step and at the end of the run) read its own movements
--                       instead of the whole table.
DROP INDEX ix_movement_file;
DROP INDEX ix_movement_hold_task;
CREATE INDEX ix_movement_hold_task ON movement (hold_task) WHERE hold_task IS NOT NULL;
CREATE INDEX ix_movement_run ON movement (run_id);
