-- 11: one index finds a subscriber by address, the unique `email_key`; the UNIQUE the
-- first schema put on `email` goes (its index cost every new subscriber a third of its
-- insert). And an index finds the rows merged into a subscriber (merged_into, rare: only
-- those are in it), which the foreign key looks for whenever a subscriber is deleted
-- (erasure) or the table is made again (as here: without it, once per row, a whole scan).
-- Frozen once released: a change to the schema is a new file, for both engines.

CREATE INDEX subscribers_merged ON subscribers (merged_into) WHERE merged_into IS NOT NULL;

-- run: one_address_index
