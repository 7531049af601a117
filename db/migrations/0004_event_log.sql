-- The published event log: the relay gives each committed outbox row a position as it
-- publishes it. Positions, not outbox ids, are the offsets clients resume from: ids are
-- allocated before commit and transactions commit out of order, while a position is
-- assigned only to rows already committed, so every row not yet seen gets a larger one.

ALTER TABLE outbox
    ADD COLUMN position     bigint UNIQUE,
    ADD COLUMN prev         bigint,          -- position of the channel's previous event, 0 if none
    ADD COLUMN committed_at timestamptz;     -- commit time of the writing transaction

-- Rows still waiting for the relay, oldest first.
DROP INDEX outbox_unpublished_idx;
CREATE INDEX outbox_pending_idx ON outbox (id) WHERE position IS NULL;
-- Replay and gap filling read one channel's events by position.
DROP INDEX outbox_channel_idx;
CREATE INDEX outbox_channel_position_idx ON outbox (channel, position)
    WHERE position IS NOT NULL;
-- Pruning by age.
DROP INDEX outbox_created_idx;
CREATE INDEX outbox_committed_idx ON outbox (committed_at) WHERE position IS NOT NULL;

-- The newest position of each channel: `prev` of its next event, and the offset a new
-- subscriber starts from. Kept when old events are pruned.
CREATE TABLE channel_heads (
    channel  text   PRIMARY KEY,
    position bigint NOT NULL
);

-- One row: the last position assigned (positions never go backwards, even after pruning)
-- and the position up to which events are known to have reached Redis; a new relay
-- leader publishes again everything after it.
CREATE TABLE relay_state (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_position      bigint  NOT NULL DEFAULT 0,
    published_through  bigint  NOT NULL DEFAULT 0
);
INSERT INTO relay_state DEFAULT VALUES;

-- Wake the relay when outbox rows commit (NOTIFY is delivered at commit, and repeated
-- notifications of one transaction are folded into one). jangteo's own pooled
-- connections set jangteo.notify_after_commit and notify right after their commit
-- instead (db/pool.py): PostgreSQL serializes the commits of notifying transactions,
-- WAL flush included, which would cap every writer at one commit per flush. Any other
-- writer (psql, a batch job) is woken for by this trigger.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('jangteo.notify_after_commit', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('jangteo_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
