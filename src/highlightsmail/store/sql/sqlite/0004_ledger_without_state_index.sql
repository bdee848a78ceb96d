-- 4: the ledger without its index by state
-- Frozen once released: a change to the schema is a new file, for both engines.

DROP INDEX deliveries_claim;
