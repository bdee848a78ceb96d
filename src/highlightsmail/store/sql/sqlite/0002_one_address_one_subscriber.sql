-- 2: one subscriber per address, whatever the Unicode form or case of its letters
-- Frozen once released: a change to the schema is a new file, for both engines.

ALTER TABLE subscribers ADD COLUMN email_key TEXT NOT NULL DEFAULT '';

ALTER TABLE subscribers ADD COLUMN merged_into INTEGER REFERENCES subscribers (id);

-- run: merge_same_addresses

CREATE UNIQUE INDEX subscribers_email_key ON subscribers (email_key) WHERE merged_into IS NULL;
