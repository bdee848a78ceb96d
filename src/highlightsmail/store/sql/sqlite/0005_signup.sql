-- 5: signup with double opt-in: the `pending` status, the `form` source, consents, limits
-- Frozen once released: a change to the schema is a new file, for both engines.

-- run: allow_in_checks subscribers status=pending

-- run: allow_in_checks events from_status=pending to_status=pending source=form

CREATE TABLE consents (
            id            INTEGER PRIMARY KEY,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            at            TEXT NOT NULL,
            source        TEXT NOT NULL,
            ip            TEXT,
            detail        TEXT
        );

CREATE INDEX consents_subscriber ON consents (subscriber_id, id);

CREATE TABLE confirmation_mails (
            id            INTEGER PRIMARY KEY,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            at            TEXT NOT NULL,
            state         TEXT NOT NULL CHECK (state IN ('sending', 'sent'))
        );

CREATE INDEX confirmation_mails_subscriber ON confirmation_mails (subscriber_id, at);

CREATE TABLE signup_posts (
            id     INTEGER PRIMARY KEY,
            client TEXT NOT NULL,
            at     TEXT NOT NULL
        );

CREATE INDEX signup_posts_client ON signup_posts (client, at);

CREATE INDEX signup_posts_at ON signup_posts (at);
