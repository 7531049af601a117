-- The queue strategy: a purchase is appended to its listing's partition of a log (a
-- Redis Stream), and one consumer per partition applies the waiting purchases in log
-- order, a batch per transaction (server/orders/queue.py). Per partition, the last
-- entry applied is recorded in the batch's own transaction, so a consumer that dies
-- after its commit and before it acknowledged the entries leaves them to a successor
-- that skips them instead of applying them twice.
CREATE TABLE purchase_queue (
    partition  integer PRIMARY KEY,
    applied_ms  bigint NOT NULL,  -- the last applied entry's id, <ms>-<seq>
    applied_seq bigint NOT NULL
);

-- Apply a batch of entries (a JSON array of objects: entry, request, reply, buyer,
-- listing, quantity, key, fingerprint in hex, status), in order, each as a purchase of
-- its own (a refusal undoes only its own entry), and tell each waiting request its
-- outcome by NOTIFY on its reply channel, delivered when the batch commits. Entries at or
-- before the partition's last applied one are skipped. Returns how many were applied.
CREATE FUNCTION purchase_queue_apply(queue_partition integer, entries jsonb, key_ttl interval)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    last purchase_queue;
    entry jsonb;
    entry_ms bigint;
    entry_seq bigint;
    bought record;
    reply jsonb;
    refusal text;
    refusal_detail text;
    applied integer := 0;
BEGIN
    SELECT * INTO last FROM purchase_queue WHERE partition = queue_partition FOR UPDATE;
    FOR entry IN SELECT value FROM jsonb_array_elements(entries) LOOP
        entry_ms := split_part(entry->>'entry', '-', 1)::bigint;
        entry_seq := split_part(entry->>'entry', '-', 2)::bigint;
        CONTINUE WHEN last.partition IS NOT NULL
                  AND (entry_ms, entry_seq) <= (last.applied_ms, last.applied_seq);
        BEGIN
            SELECT * INTO bought FROM purchase_listing(
                (entry->>'buyer')::bigint, (entry->>'listing')::bigint,
                (entry->>'quantity')::integer, 'atomic', NULL, 1, entry->>'key',
                decode(entry->>'fingerprint', 'hex'), (entry->>'status')::integer, key_ttl);
            reply := jsonb_build_object(
                'request', entry->>'request', 'replayed', bought.replayed,
                'status', bought.status_code, 'body', bought.body, 'region', bought.region);
        EXCEPTION WHEN raise_exception THEN
            GET STACKED DIAGNOSTICS refusal = MESSAGE_TEXT, refusal_detail = PG_EXCEPTION_DETAIL;
            reply := jsonb_build_object(
                'request', entry->>'request', 'refused', refusal,
                'detail', nullif(refusal_detail, ''));
        END;
        PERFORM pg_notify(entry->>'reply', reply::text);
        applied := applied + 1;
        last := ROW(queue_partition, entry_ms, entry_seq);
    END LOOP;
    IF applied > 0 THEN
        INSERT INTO purchase_queue (partition, applied_ms, applied_seq)
        VALUES (queue_partition, last.applied_ms, last.applied_seq)
        ON CONFLICT (partition) DO UPDATE
            SET applied_ms = excluded.applied_ms, applied_seq = excluded.applied_seq;
    END IF;
    RETURN applied;
END
$$;
