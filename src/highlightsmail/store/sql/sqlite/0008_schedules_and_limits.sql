-- 8: sending later and sending limits: one schedule per issue (what was approved, when,
-- and where it stands), and the recipients each claim took, for the sliding window,
-- the daily limit and the warm-up shared by every sender of the workspace
-- Frozen once released: a change to the schema is a new file, for both engines.

CREATE TABLE schedules (
            issue          TEXT PRIMARY KEY,
            due            TEXT NOT NULL,
            zone           TEXT NOT NULL,
            fingerprint    TEXT NOT NULL,
            state          TEXT NOT NULL
                           CHECK (state IN ('scheduled', 'running', 'held', 'paused', 'cancelled', 'missed', 'sent')),
            reason         TEXT,
            paused_until   TEXT,
            started        TEXT,
            provider_batch TEXT,
            version        INTEGER NOT NULL DEFAULT 0,
            updated        TEXT NOT NULL
        );

CREATE TABLE send_counts (
            id     INTEGER PRIMARY KEY AUTOINCREMENT,
            at     TEXT NOT NULL,
            domain TEXT NOT NULL,
            count  INTEGER NOT NULL
        );

CREATE INDEX send_counts_at ON send_counts (at);

CREATE INDEX send_counts_domain ON send_counts (domain, at);

CREATE TABLE send_limits_turn (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            turns INTEGER NOT NULL
        );
