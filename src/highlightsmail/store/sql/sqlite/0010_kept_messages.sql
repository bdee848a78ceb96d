-- 10: the rendered message of each dispatch, kept once (content-addressed), and the issue
-- file as it was then: again from the first batch of a resumed run, if it changed. So the
-- message a subscriber got can be rebuilt, and a later edit shown as a correction.
-- Frozen once released: a change to the schema is a new file, for both engines.

CREATE TABLE kept_messages (
            digest  TEXT PRIMARY KEY,
            message TEXT NOT NULL
        );

CREATE TABLE dispatch_messages (
            issue       TEXT NOT NULL,
            first_batch INTEGER NOT NULL,
            digest      TEXT NOT NULL,
            source      TEXT,
            kept        TEXT NOT NULL,
            PRIMARY KEY (issue, first_batch)
        );
