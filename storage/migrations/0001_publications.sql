-- Durable channel streams and their publications (issue 3: durable history).

-- One row per durable channel: its epoch (stable across restarts, so clients keep their
-- positions) and the last committed offset. Updated in the same transaction as the rows.
CREATE TABLE channel_streams (
    channel     text        PRIMARY KEY,
    epoch       text        NOT NULL,
    top         bigint      NOT NULL DEFAULT 0 CHECK (top >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Range-partitioned by time so retention is a DROP of whole partitions, never a bulk
-- DELETE. Partitions are created ahead by storage/partitions.py; there is deliberately no
-- DEFAULT partition: rows landing there would block creating the matching partition later.
-- A payload is stored either as jsonb (valid JSON, queryable) or as bytea (anything else).
CREATE TABLE publications (
    channel     text        NOT NULL,
    "offset"    bigint      NOT NULL,
    epoch       text        NOT NULL,
    id          uuid        NOT NULL,
    data        jsonb,
    data_raw    bytea,
    info        jsonb,
    tags        jsonb,
    created_at  timestamptz NOT NULL,
    CONSTRAINT publications_one_payload CHECK ((data IS NULL) <> (data_raw IS NULL))
) PARTITION BY RANGE (created_at);

-- Serves "since offset in a channel" (forward scan) and "latest N in a channel" (backward
-- scan): one index instead of two keeps the write path cheaper.
CREATE INDEX publications_channel_offset_idx ON publications (channel, "offset");

-- "By id" lookups (idempotent retries, moderation, links to a message).
CREATE INDEX publications_id_idx ON publications (id);
