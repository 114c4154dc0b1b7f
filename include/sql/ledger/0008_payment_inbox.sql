-- Ledger 0008: what the payments inbox holds that is not a payment file, and staff tasks for held
-- movements grouped by cause (issue 16).
--
-- payment_inbox_entry  one row per entry of the inbox that is not taken (never moved, never
--                      opened): a file whose name is not a delivery name, a file being written
--                      (.part, dot-file), a symbolic link, a FIFO, a folder, a device, a socket.
--                      Keyed by the SHA-256 of its kind and raw name bytes, so the same entry is
--                      one row run after run. name is shown escaped (\xNN for every byte that is
--                      not printable ASCII, CPR masked). last_run_id: the run that last saw it
--                      (the run's count files_ignored); gone_at: when a run no longer saw it (seen
--                      again later, it counts as new: first_seen_at, first_run_id and tasked_at
--                      start again); tasked_at: when its staff task was raised (files with another
--                      name and links only, one task per run that first saw such entries).
CREATE TABLE payment_inbox_entry (
    entry_key     CHAR(64)     NOT NULL PRIMARY KEY,
    name          TEXT         NOT NULL,
    kind          VARCHAR(12)  NOT NULL
        CHECK (kind IN ('partial', 'bad_name', 'symlink', 'fifo', 'folder', 'device', 'socket', 'other')),
    first_seen_at TIMESTAMP    NOT NULL,
    first_run_id  VARCHAR(64),
    last_seen_at  TIMESTAMP    NOT NULL,
    last_run_id   VARCHAR(64),
    gone_at       TIMESTAMP,
    tasked_at     TIMESTAMP
);
CREATE INDEX ix_payment_inbox_entry_run ON payment_inbox_entry (last_run_id);

-- movement.hold_task: the staff task a held movement is listed in, one per file, reason and
-- liability (or the agency its FordringID names, where the claim is not known): the task's text
-- names the first movements, this column all of them. NULL for movements held before: each has
-- its own task (PAY-<movement>).
ALTER TABLE movement ADD COLUMN hold_task VARCHAR(100);
CREATE INDEX ix_movement_hold_task ON movement (hold_task);
