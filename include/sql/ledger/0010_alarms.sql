-- Ledger 0010: alarms, the conditions a person must act on (issue 20).
--
-- A run no longer fails for what staff must fix in FBS (a held agency, rejections, blocked
-- liabilities); each such condition is an alarm instead: raised by the run that sees it, kept open
-- while later runs still see it, resolved by the first run that no longer does. The daily digest
-- says each open alarm to the integration team, a new one once as new; the status page lists them.
--
-- alarm_key    what the condition is, stable across runs: '<kind>:<agency>' (e.g. 'C3_held:715100')
-- kind         held_agency | failed_agency | rejections | unconfirmed | payment_differences | ...
-- audience     'staff' (data in FBS to fix) or 'operator' (the integration could not do its work)
-- agency_id    the agency it concerns, NULL for the whole deployment
-- message      what is wrong and what to do, in counts and ids (never a CPR: masked on write)
-- occurrences  how many runs have seen it since it was raised
-- notified_at  when the digest last said it (NULL: not said yet, so it is new in the next digest)
CREATE TABLE alarm (
    alarm_key     VARCHAR(120) NOT NULL PRIMARY KEY,
    kind          VARCHAR(40)  NOT NULL,
    audience      VARCHAR(10)  NOT NULL CHECK (audience IN ('staff', 'operator')),
    agency_id     VARCHAR(20),
    message       TEXT         NOT NULL,
    first_seen_at TIMESTAMP    NOT NULL,
    last_seen_at  TIMESTAMP    NOT NULL,
    first_run_id  VARCHAR(64),
    last_run_id   VARCHAR(64),
    occurrences   INTEGER      NOT NULL DEFAULT 1,
    resolved_at   TIMESTAMP,
    notified_at   TIMESTAMP
);
CREATE INDEX ix_alarm_open ON alarm (resolved_at, kind);
