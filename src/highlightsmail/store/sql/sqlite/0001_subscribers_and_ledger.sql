-- 1: subscribers, their history, and the tables of the send ledger
-- Frozen once released: a change to the schema is a new file, for both engines.

CREATE TABLE subscribers (
            id      INTEGER PRIMARY KEY,
            email   TEXT NOT NULL UNIQUE COLLATE NOCASE,
            name    TEXT NOT NULL DEFAULT '',
            status  TEXT NOT NULL CHECK (status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        );

CREATE INDEX subscribers_status ON subscribers (status, id);

CREATE TABLE events (
            id            INTEGER PRIMARY KEY,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            at            TEXT NOT NULL,
            from_status   TEXT CHECK (from_status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            to_status     TEXT NOT NULL CHECK (to_status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            source        TEXT NOT NULL CHECK (source IN ('web', 'one-click', 'cli', 'import', 'sendgrid')),
            detail        TEXT
        );

CREATE INDEX events_subscriber ON events (subscriber_id, id);

CREATE TABLE dispatches (
            issue    TEXT PRIMARY KEY,
            started  TEXT NOT NULL,
            backend  TEXT NOT NULL,
            total    INTEGER NOT NULL,
            finished TEXT
        );

CREATE TABLE deliveries (
            issue         TEXT NOT NULL,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            email         TEXT NOT NULL,
            state         TEXT NOT NULL DEFAULT 'pending'
                          CHECK (state IN ('pending', 'in_flight', 'sent', 'skipped', 'failed', 'in_doubt')),
            batch         INTEGER,
            attempts      INTEGER NOT NULL DEFAULT 0,
            last_error    TEXT,
            message_id    TEXT,
            created       TEXT NOT NULL,
            updated       TEXT NOT NULL,
            PRIMARY KEY (issue, subscriber_id)
        );

CREATE INDEX deliveries_batch ON deliveries (issue, batch);

CREATE TABLE test_sends (
            id          INTEGER PRIMARY KEY,
            issue       TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            recipients  TEXT NOT NULL CHECK (json_valid(recipients)),
            at          TEXT NOT NULL
        );

CREATE INDEX test_sends_issue ON test_sends (issue, fingerprint);

CREATE INDEX deliveries_claim ON deliveries (issue, state, subscriber_id);
