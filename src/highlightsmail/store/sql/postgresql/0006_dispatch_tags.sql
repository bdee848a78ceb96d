-- 6: each dispatch's tag, from which every message's Message-ID is derived (tokens.py)
-- Frozen once released: a change to the schema is a new file, for both engines.

ALTER TABLE dispatches ADD COLUMN tag TEXT COLLATE "C";

-- run: tag_dispatches

CREATE INDEX dispatches_tag ON dispatches (tag);
