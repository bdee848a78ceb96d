-- 3: delivery events: what SendGrid's Event Webhook and bounce mail say about each message
-- Frozen once released: a change to the schema is a new file, for both engines.

CREATE TABLE events_new (
            id            INTEGER PRIMARY KEY,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            at            TEXT NOT NULL,
            from_status   TEXT CHECK (from_status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            to_status     TEXT NOT NULL CHECK (to_status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            source        TEXT NOT NULL CHECK (source IN ('web', 'one-click', 'cli', 'import', 'sendgrid',
                                                          'sendgrid-webhook', 'bounce-mail')),
            detail        TEXT
        );

INSERT INTO events_new (id, subscriber_id, at, from_status, to_status, source, detail) SELECT id, subscriber_id, at, from_status, to_status, source, detail FROM events;

DROP TABLE events;

ALTER TABLE events_new RENAME TO events;

CREATE INDEX events_subscriber ON events (subscriber_id, id);

CREATE TABLE delivery_events (
            id            INTEGER PRIMARY KEY,
            event_key     TEXT NOT NULL UNIQUE,
            issue         TEXT NOT NULL,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            kind          TEXT NOT NULL CHECK (kind IN ('delivered', 'deferred', 'bounce', 'blocked', 'dropped',
                                                        'spamreport', 'unsubscribe', 'group_unsubscribe',
                                                        'open', 'click', 'dsn-permanent', 'dsn-temporary')),
            at            TEXT NOT NULL,
            url           TEXT,
            detail        TEXT
        );

CREATE INDEX delivery_events_issue ON delivery_events (issue, kind, subscriber_id);

CREATE INDEX delivery_events_subscriber ON delivery_events (subscriber_id, issue, kind);

CREATE TABLE scanned_mail (
            mail_key TEXT PRIMARY KEY,
            at       TEXT NOT NULL,
            outcome  TEXT NOT NULL
        );
