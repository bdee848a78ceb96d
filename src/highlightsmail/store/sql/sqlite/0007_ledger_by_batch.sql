-- 7: the send ledger kept per batch: a dispatch's recipients fixed in chunks of ids, one row
-- per batch claimed, and rows per recipient only where one's fate differs from its batch's
-- Frozen once released: a change to the schema is a new file, for both engines.

ALTER TABLE dispatches ADD COLUMN claimed_to INTEGER NOT NULL DEFAULT 0;

ALTER TABLE dispatches ADD COLUMN batches INTEGER NOT NULL DEFAULT 0;

CREATE TABLE ledger_recipients (
            issue    TEXT NOT NULL,
            chunk    INTEGER NOT NULL,
            first_id INTEGER NOT NULL,
            last_id  INTEGER NOT NULL,
            size     INTEGER NOT NULL,
            ids      TEXT NOT NULL,
            PRIMARY KEY (issue, chunk)
        );

CREATE INDEX ledger_recipients_last ON ledger_recipients (issue, last_id);

CREATE TABLE ledger_batches (
            issue      TEXT NOT NULL,
            batch      INTEGER NOT NULL,
            first_id   INTEGER,
            last_id    INTEGER,
            ids        TEXT,
            counted    INTEGER NOT NULL,
            state      TEXT NOT NULL CHECK (state IN ('in_flight', 'sent', 'failed', 'in_doubt')),
            last_error TEXT,
            message_id TEXT,
            claimed_by INTEGER,
            updated    TEXT NOT NULL,
            PRIMARY KEY (issue, batch)
        );

CREATE INDEX ledger_batches_range ON ledger_batches (issue, first_id, last_id);

CREATE TABLE ledger_exceptions (
            issue         TEXT NOT NULL,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            state         TEXT NOT NULL
                          CHECK (state IN ('pending', 'in_flight', 'sent', 'skipped', 'failed', 'in_doubt')),
            batch         INTEGER,
            attempts      INTEGER NOT NULL DEFAULT 0,
            last_error    TEXT,
            message_id    TEXT,
            updated       TEXT NOT NULL,
            PRIMARY KEY (issue, subscriber_id)
        );

CREATE INDEX ledger_exceptions_batch ON ledger_exceptions (issue, batch);

-- run: ledger_by_batch

DROP TABLE deliveries;
