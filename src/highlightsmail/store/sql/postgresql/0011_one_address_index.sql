-- 11: one index finds a subscriber by address, the unique `email_key` (this schema never
-- had SQLite's second one, on `email`). And an index finds the rows merged into a
-- subscriber (merged_into, rare: only those are in it), which the foreign key looks for
-- whenever a subscriber is deleted (erasure).
-- Frozen once released: a change to the schema is a new file, for both engines.

CREATE INDEX subscribers_merged ON subscribers (merged_into) WHERE merged_into IS NOT NULL;
