-- 11: one index finds a subscriber by address, the unique `email_key`; the UNIQUE the
-- first schema put on `email` goes (its index cost every new subscriber a third of its insert)
-- Frozen once released: a change to the schema is a new file, for both engines.

-- run: one_address_index
