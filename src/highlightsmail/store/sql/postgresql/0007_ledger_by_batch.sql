-- 7: the send ledger kept per batch: a dispatch's recipients fixed in chunks of ids, one row
-- per batch claimed, and rows per recipient only where one's fate differs from its batch's
-- Frozen once released: a change to the schema is a new file, for both engines.

ALTER TABLE dispatches ADD COLUMN claimed_to BIGINT NOT NULL DEFAULT 0;

CREATE TABLE ledger_recipients (
            issue    TEXT COLLATE "C" NOT NULL,
            chunk    BIGINT NOT NULL,
            first_id BIGINT NOT NULL,
            last_id  BIGINT NOT NULL,
            size     INTEGER NOT NULL,
            ids      TEXT COLLATE "C" NOT NULL,
            PRIMARY KEY (issue, chunk)
        );

CREATE INDEX ledger_recipients_last ON ledger_recipients (issue, last_id);

CREATE TABLE ledger_batches (
            issue      TEXT COLLATE "C" NOT NULL,
            batch      BIGINT NOT NULL,
            first_id   BIGINT,
            last_id    BIGINT,
            ids        TEXT COLLATE "C",
            counted    INTEGER NOT NULL,
            state      TEXT COLLATE "C" NOT NULL CHECK (state IN ('in_flight', 'sent', 'failed', 'in_doubt')),
            last_error TEXT COLLATE "C",
            message_id TEXT COLLATE "C",
            claimed_by BIGINT,
            updated    TEXT COLLATE "C" NOT NULL,
            PRIMARY KEY (issue, batch)
        );

CREATE INDEX ledger_batches_range ON ledger_batches (issue, first_id, last_id);

CREATE TABLE ledger_exceptions (
            issue         TEXT COLLATE "C" NOT NULL,
            subscriber_id BIGINT NOT NULL REFERENCES subscribers (id),
            state         TEXT COLLATE "C" NOT NULL
                          CHECK (state IN ('pending', 'in_flight', 'sent', 'skipped', 'failed', 'in_doubt')),
            batch         BIGINT,
            attempts      INTEGER NOT NULL DEFAULT 0,
            last_error    TEXT COLLATE "C",
            message_id    TEXT COLLATE "C",
            updated       TEXT COLLATE "C" NOT NULL,
            PRIMARY KEY (issue, subscriber_id)
        );

CREATE INDEX ledger_exceptions_batch ON ledger_exceptions (issue, batch);

-- run: ledger_by_batch

DROP TABLE deliveries;
