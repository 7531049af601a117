-- Each outbox row carries its channel's slot (one of 64, a stable hash of the name), and
-- the rows waiting for the relay are indexed by slot: a partition is a set of whole
-- slots (partition = slot % count), so its leader reads only its own rows, and the
-- waiting rows of the other partitions, or the entries that publishing left behind in
-- the index until the next vacuum, cost it nothing. The count divides 64, so doubling
-- it splits every partition in two.
DO $$
BEGIN
    IF (SELECT 64 % partitions FROM relay_config) <> 0 THEN
        RAISE EXCEPTION 'the relay partition count must divide 64: set it with'
            ' `jangteo relay partitions N` (N = 1, 2, 4, 8, 16, 32 or 64) and migrate again';
    END IF;
END
$$;

CREATE FUNCTION relay_slot(channel text) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (('x' || substr(md5(channel), 1, 15))::bit(60)::bigint % 64)::smallint $$;

-- The same partitions as before for every count that divides 64.
CREATE OR REPLACE FUNCTION relay_partition(channel text, partitions integer) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT relay_slot(channel) % partitions $$;

ALTER TABLE relay_config DROP CONSTRAINT relay_config_partitions_check,
    ADD CONSTRAINT relay_config_partitions_check CHECK (partitions BETWEEN 1 AND 64
                                                        AND 64 % partitions = 0);

ALTER TABLE outbox ADD COLUMN slot smallint GENERATED ALWAYS AS (relay_slot(channel)) STORED;
CREATE INDEX outbox_pending_slot_idx ON outbox (slot, id) WHERE position IS NULL;
DROP INDEX outbox_pending_idx;
-- Positions stay unique; a waiting row (no position yet) is no longer in this index.
CREATE UNIQUE INDEX outbox_position_idx ON outbox (position) WHERE position IS NOT NULL;
ALTER TABLE outbox DROP CONSTRAINT outbox_position_key;

-- Writers that do not wake the relay themselves (psql, a batch job) wake the leaders of
-- the slots they write to (notifications repeated in a transaction are folded into one).
CREATE FUNCTION outbox_notify_slot() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jangteo_outbox_' || NEW.slot, '');
    RETURN NULL;
END
$$;
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH ROW
    WHEN (current_setting('jangteo.notify_after_commit', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION outbox_notify_slot();
