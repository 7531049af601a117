-- The relay's work is split into partitions: a channel belongs to partition
-- relay_partition(channel, partitions) (a stable hash of its name), and each partition
-- has a leader of its own. The count lives here, so that every instance reads the same
-- one; `jangteo relay partitions N` changes it and moves `generation` on.
CREATE TABLE relay_config (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    partitions integer NOT NULL DEFAULT 1 CHECK (partitions BETWEEN 1 AND 64),
    generation integer NOT NULL DEFAULT 1
);
INSERT INTO relay_config DEFAULT VALUES;

-- Per partition of a generation: the position up to which its events are known to have
-- reached Redis; a new leader of the partition publishes again everything after it.
CREATE TABLE relay_partitions (
    generation        integer NOT NULL,
    partition         integer NOT NULL,
    published_through bigint  NOT NULL,
    PRIMARY KEY (generation, partition)
);
INSERT INTO relay_partitions SELECT 1, 0, published_through FROM relay_state;

-- Positions come from a sequence that all partition leaders draw from without waiting
-- for each other: unique and increasing, never reused, and offsets clients hold stay
-- valid whatever the count. (Gaps are harmless: `prev` says what precedes an event.)
CREATE SEQUENCE outbox_position_seq OWNED BY outbox.position;
SELECT setval('outbox_position_seq', last_position + 1, false) FROM relay_state;
DROP TABLE relay_state;

CREATE FUNCTION relay_partition(channel text, partitions integer) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (('x' || substr(md5(channel), 1, 15))::bit(60)::bigint % partitions)::integer $$;

-- The last position handed out (0 before the first).
CREATE FUNCTION relay_last_position() RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
          FROM outbox_position_seq $$;
