-- 9: topics a subscriber chose, a pause, and the keyed hashes of addresses erased on request
-- Frozen once released: a change to the schema is a new file, for both engines.

CREATE TABLE subscriber_topics (
            subscriber_id BIGINT NOT NULL REFERENCES subscribers (id),
            topic         TEXT COLLATE "C" NOT NULL,
            PRIMARY KEY (subscriber_id, topic)
        );

CREATE INDEX subscriber_topics_topic ON subscriber_topics (topic, subscriber_id);

ALTER TABLE subscribers ADD COLUMN paused_until TEXT COLLATE "C";

CREATE TABLE erased_addresses (
            address_hash TEXT COLLATE "C" PRIMARY KEY,
            at           TEXT COLLATE "C" NOT NULL
        );

-- the topics a dispatch went to (NULL: every active subscriber), for `report`
ALTER TABLE dispatches ADD COLUMN audience TEXT COLLATE "C";
