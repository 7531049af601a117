-- The queue's batch, planned once per batch instead of once per entry.
--
-- 0012 plans every statement of purchase_queue_apply at each execution, so that no plan
-- made while a table was empty outlives it. But a statement run once per entry was then
-- planned once per entry: the stored-key lookup, the refusal check, the reply's NOTIFY
-- and, per outbox row, the trigger's NOTIFY. Planning was about half of a batch's time.
-- Now every statement runs once per batch and what is decided per entry is plain
-- expressions on values in memory:
--   * the batch's idempotency keys are tried (advisory locks) entry by entry, then the
--     stored ones read in one statement;
--   * the refusal check is an expression (purchase_refusal_reason() assigned, not
--     selected from);
--   * the replies are notified in one statement, in log order;
--   * the outbox rows' trigger stays quiet (jangteo.notify_after_commit, for this
--     transaction) and each slot written to is woken once, as the pooled connections do;
--   * arrays grow by subscript, in place, instead of being copied at every append.
-- Every entry's outcome, row and event is what 0010 decided; only the work is less.

CREATE OR REPLACE FUNCTION purchase_queue_apply(
    queue_partition integer, entries jsonb, key_ttl interval)
RETURNS integer LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    last purchase_queue;
    entry jsonb;
    entry_ms bigint;
    entry_seq bigint;
    fresh jsonb[] := '{}';            -- the entries not applied yet, in log order
    -- The running state, locked: the batch's listings, and its buyers' balances.
    listing_ids bigint[] := '{}';
    stock listings[] := '{}';
    wallet_ids bigint[] := '{}';
    balances bigint[] := '{}';
    -- Per entry: whether its key's lock was taken; the keys stored before the batch.
    key_buyers bigint[] := '{}';
    key_names text[] := '{}';
    key_free boolean[] := '{}';
    stored_keys text[];
    stored_rows idempotency_keys[];
    -- The purchases decided, in log order: the order to place, the listing right after
    -- it, the entry it answers and the key it stores.
    placed orders[] := '{}';
    after listings[] := '{}';
    placed_entries jsonb[] := '{}';
    placed_keys text[] := '{}';
    bodies text[];
    slots smallint[];  -- the outbox slots the batch's events went to
    -- Per entry: its outcome, and the purchase whose body answers it (bought or
    -- replayed from this batch), if any.
    replies jsonb[] := '{}';
    answered_by integer[] := '{}';
    -- The entry being decided.
    buyer bigint;
    wanted integer;
    entry_key text;
    buyer_key text;
    entry_fingerprint bytea;
    stored idempotency_keys;
    listing listings;
    wallet wallets;
    refusal record;
    li integer;
    wi integer;
    j integer;
    refusal_slug text;
    refusal_detail text;
    amount bigint;
    o orders;
    order_ids regclass := pg_get_serial_sequence('orders', 'id')::regclass;
BEGIN
    -- What is new: the entries after the last applied one (as 0009 skipped them).
    SELECT * INTO last FROM purchase_queue WHERE partition = queue_partition FOR UPDATE;
    FOR entry IN SELECT value FROM jsonb_array_elements(entries) LOOP
        entry_ms := split_part(entry->>'entry', '-', 1)::bigint;
        entry_seq := split_part(entry->>'entry', '-', 2)::bigint;
        CONTINUE WHEN last.partition IS NOT NULL
                  AND (entry_ms, entry_seq) <= (last.applied_ms, last.applied_seq);
        fresh[cardinality(fresh) + 1] := entry;
        last := ROW(queue_partition, entry_ms, entry_seq);
    END LOOP;
    IF cardinality(fresh) = 0 THEN
        RETURN 0;
    END IF;
    -- The relay's leaders are woken once per slot below, not once per outbox row.
    PERFORM set_config('jangteo.notify_after_commit', 'on', true);

    -- Locks in the global order: every listing of the batch by id, then every buyer's
    -- wallet by user_id.
    FOR listing IN
        SELECT * FROM listings
        WHERE id IN (SELECT (e->>'listing')::bigint FROM unnest(fresh) e)
        ORDER BY id FOR UPDATE
    LOOP
        listing_ids[cardinality(listing_ids) + 1] := listing.id;
        stock[cardinality(stock) + 1] := listing;
    END LOOP;
    FOR wallet IN
        SELECT * FROM wallets
        WHERE user_id IN (SELECT (e->>'buyer')::bigint FROM unnest(fresh) e)
        ORDER BY user_id FOR UPDATE
    LOOP
        wallet_ids[cardinality(wallet_ids) + 1] := wallet.user_id;
        balances[cardinality(balances) + 1] := wallet.balance;
    END LOOP;

    -- One run per key at a time: each entry's key is tried in log order (a key met again
    -- in the batch is this transaction's already), then what is stored is read at once.
    -- (Looked up by the batch's buyers and keys as arrays, which the planner weighs by
    -- their length: an index scan, whatever the table's statistics say.)
    FOR i IN 1 .. cardinality(fresh) LOOP
        key_buyers[i] := (fresh[i]->>'buyer')::bigint;
        key_names[i] := fresh[i]->>'key';
        key_free[i] := pg_try_advisory_xact_lock(hashtextextended(key_names[i], key_buyers[i]));
    END LOOP;
    SELECT coalesce(array_agg(format('%s:%s', k.user_id, k.key)), '{}'),
           coalesce(array_agg(k), '{}')
    INTO stored_keys, stored_rows
    FROM idempotency_keys k
    WHERE k.user_id = ANY(key_buyers) AND k.key = ANY(key_names) AND k.expires_at > now();

    -- Decide each entry in log order, as purchase_listing() would after the ones before.
    FOR i IN 1 .. cardinality(fresh) LOOP
        entry := fresh[i];
        buyer := (entry->>'buyer')::bigint;
        wanted := (entry->>'quantity')::integer;
        entry_key := entry->>'key';
        buyer_key := format('%s:%s', buyer, entry_key);
        entry_fingerprint := decode(entry->>'fingerprint', 'hex');

        -- A key a purchase of this batch stored: as if its response were stored already.
        j := array_position(placed_keys, buyer_key);
        IF j IS NOT NULL THEN
            IF decode(placed_entries[j]->>'fingerprint', 'hex') <> entry_fingerprint THEN
                replies[i] := purchase_queue_refused(entry, 'idempotency-key-reused', NULL);
            ELSE
                replies[i] := purchase_queue_answered(
                    entry, true, (placed_entries[j]->>'status')::integer, NULL);
                answered_by[i] := j;
            END IF;
            CONTINUE;
        END IF;
        IF NOT key_free[i] THEN
            replies[i] := purchase_queue_refused(entry, 'idempotency-key-in-flight', NULL);
            CONTINUE;
        END IF;
        -- A key answered before the batch is answered again.
        j := array_position(stored_keys, buyer_key);
        IF j IS NOT NULL THEN
            stored := stored_rows[j];
            IF stored.fingerprint <> entry_fingerprint THEN
                replies[i] := purchase_queue_refused(entry, 'idempotency-key-reused', NULL);
            ELSE
                replies[i] := purchase_queue_answered(entry, true, stored.status_code, NULL)
                    || jsonb_build_object('body', convert_from(stored.response_body, 'UTF8'));
            END IF;
            CONTINUE;
        END IF;

        -- The listing and the wallet as the entries before left them.
        li := array_position(listing_ids, (entry->>'listing')::bigint);
        listing := stock[li];  -- all NULL when there is no such listing
        wi := array_position(wallet_ids, buyer);
        refusal := purchase_refusal_reason(listing, buyer, wanted);
        refusal_slug := refusal.slug;
        refusal_detail := refusal.detail;
        IF refusal_slug IS NULL THEN
            amount := listing.price * wanted;
            IF wi IS NULL OR balances[wi] < amount THEN
                refusal_slug := 'insufficient-funds';
                refusal_detail := format('%s needed', amount);
            END IF;
        END IF;
        IF refusal_slug IS NOT NULL THEN
            replies[i] := purchase_queue_refused(entry, refusal_slug, refusal_detail);
            CONTINUE;
        END IF;

        -- Bought: taken from the running state; written below, once per row.
        listing.quantity := listing.quantity - wanted;
        IF listing.quantity = 0 THEN
            listing.status := 'sold';
        END IF;
        listing.version := listing.version + 1;
        stock[li] := listing;
        balances[wi] := balances[wi] - amount;
        o.id := nextval(order_ids);  -- drawn now, so that a reply knows its order
        o.listing_id := listing.id;
        o.buyer_id := buyer;
        o.seller_id := listing.seller_id;
        o.quantity := wanted;
        o.unit_price := listing.price;
        o.amount := amount;
        j := cardinality(placed) + 1;
        placed[j] := o;
        after[j] := listing;
        placed_entries[j] := entry;
        placed_keys[j] := buyer_key;
        replies[i] := purchase_queue_answered(
            entry, false, (entry->>'status')::integer, listing.region);
        answered_by[i] := j;
    END LOOP;

    IF cardinality(placed) > 0 THEN
        -- Each listing's row once: the batch's stock taken, a version per order.
        UPDATE listings l SET quantity = l.quantity - t.taken,
            status = CASE WHEN l.quantity = t.taken THEN 'sold' ELSE l.status END,
            version = l.version + t.orders, updated_at = now()
        FROM (SELECT p.listing_id, sum(p.quantity) AS taken, count(*) AS orders
              FROM unnest(placed) p GROUP BY p.listing_id) t
        WHERE l.id = t.listing_id;
        -- Each buyer's wallet once.
        UPDATE wallets w SET balance = w.balance - t.spent, updated_at = now()
        FROM (SELECT p.buyer_id, sum(p.amount) AS spent
              FROM unnest(placed) p GROUP BY p.buyer_id) t
        WHERE w.user_id = t.buyer_id;
        -- The rows below are written from memory: no plan of theirs reads a table, so
        -- they keep cached plans, and so do what they call once per row (the foreign
        -- keys' checks, the events' function) instead of being planned for each row.
        PERFORM set_config('plan_cache_mode', 'auto', true);
        -- The orders (the columns purchase_listing() writes, with the ids drawn above),
        -- each as the API answers it: the response stored and replied.
        WITH written AS (
            INSERT INTO orders AS x
                (id, listing_id, buyer_id, seller_id, quantity, unit_price, amount)
            OVERRIDING SYSTEM VALUE
            SELECT p.id, p.listing_id, p.buyer_id, p.seller_id, p.quantity, p.unit_price,
                   p.amount
            FROM unnest(placed) p ORDER BY p.id
            RETURNING x.id, api_order(x) AS body
        )
        SELECT array_agg(w.body ORDER BY p.ordinality) INTO bodies
        FROM unnest(placed) WITH ORDINALITY p JOIN written w ON w.id = p.id;
        -- The events, in log order (outbox ids are drawn as the sorted rows are inserted),
        -- and the relay's leader of each slot written to woken once.
        WITH written AS (
            INSERT INTO outbox (channel, type, data)
            SELECT e.channel, e.type, e.data
            FROM generate_subscripts(placed, 1) n,
                 purchase_order_events(bodies[n], (placed[n]).buyer_id, after[n],
                                       (placed[n]).quantity) WITH ORDINALITY e
            ORDER BY n, e.ordinality
            RETURNING slot
        )
        SELECT array_agg(DISTINCT slot) INTO slots FROM written;
        PERFORM pg_notify('jangteo_outbox_' || s, '') FROM unnest(slots) s;
        -- The stored responses.
        INSERT INTO idempotency_keys AS k
            (user_id, key, fingerprint, status_code, response_body, expires_at)
        SELECT (placed_entries[n]->>'buyer')::bigint, placed_entries[n]->>'key',
               decode(placed_entries[n]->>'fingerprint', 'hex'),
               (placed_entries[n]->>'status')::integer, convert_to(bodies[n], 'UTF8'),
               now() + key_ttl
        FROM generate_subscripts(placed, 1) n
        ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint,
            status_code = excluded.status_code, response_body = excluded.response_body,
            created_at = now(), expires_at = excluded.expires_at;
        PERFORM set_config('plan_cache_mode', 'force_custom_plan', true);
    END IF;

    -- Each waiting request's outcome, in log order (delivered when the batch commits).
    FOR i IN 1 .. cardinality(fresh) LOOP
        IF answered_by[i] IS NOT NULL THEN
            replies[i] := replies[i] || jsonb_build_object('body', bodies[answered_by[i]]);
        END IF;
    END LOOP;
    PERFORM pg_notify(f->>'reply', r::text)
    FROM unnest(fresh, replies) WITH ORDINALITY AS t (f, r, n) ORDER BY n;
    INSERT INTO purchase_queue (partition, applied_ms, applied_seq)
    VALUES (queue_partition, last.applied_ms, last.applied_seq)
    ON CONFLICT (partition) DO UPDATE
        SET applied_ms = excluded.applied_ms, applied_seq = excluded.applied_seq;
    RETURN cardinality(fresh);
END
$$;
