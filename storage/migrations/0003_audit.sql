-- Append-only, hash-chained audit log (issue 5: audit). Written by storage/audit.py only.

-- Range-partitioned by time, monthly, kept forever: partitions are created ahead by
-- storage/partitions.py (storage.audit.audit_partitions) and by append() itself when the
-- current month's is missing; none is ever dropped. No DEFAULT partition (see 0001).
-- id is gap-free and strictly increasing: append() takes it from audit_head under a row
-- lock, so a rolled-back append leaves no hole and a hole means a deleted record.
CREATE TABLE audit_log (
    id          bigint      NOT NULL,
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target      text        NOT NULL,
    delta       jsonb       NOT NULL,
    prev_hash   bytea       NOT NULL,
    hash        bytea       NOT NULL,
    -- The partition key must be part of a partitioned table's primary key; the index on
    -- (id, ...) also serves verify's walk in id order.
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);

-- Who did what / what happened to X (moderation, exports).
CREATE INDEX audit_log_target_idx ON audit_log (target, id);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, id);

-- The chain head: one row, locked FOR UPDATE by every append inside the writer's own
-- transaction, which serialises appends across connections and processes.
CREATE TABLE audit_head (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    last_id     bigint      NOT NULL CHECK (last_id >= 0),
    last_hash   bytea       NOT NULL CHECK (octet_length(last_hash) = 32)
);
INSERT INTO audit_head (last_id, last_hash) VALUES (0, decode(repeat('00', 32), 'hex'));

-- Refuse changes. A superuser (or a role allowed session_replication_role = replica) can
-- still bypass triggers; `sentchat audit verify` exists to detect exactly that.
CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit records are never changed or removed; see docs/audit.md';
END
$$;

-- Row-level: cloned onto every partition, so a statement naming a partition directly is
-- refused too. Statement-level on the parent: refused even when no row matches.
CREATE TRIGGER audit_log_no_change_row BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();
-- TRUNCATE triggers are not cloned onto partitions: each partition gets its own when it is
-- created (storage/audit.py AUDIT_PARTITION_DDL).

-- The head may only move forward through UPDATE; never deleted or emptied.
CREATE TRIGGER audit_head_no_delete BEFORE DELETE OR TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();
