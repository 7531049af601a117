-- The queue strategy, single writer for real: a batch is applied at once.
--
-- purchase_queue_apply() of 0009 applied a batch entry by entry, each a call of
-- purchase_listing() in a subtransaction of its own: the hot listing's row was written
-- once per buyer (a new row version, a version bump and its index entries each time) and
-- every entry paid for a subtransaction. Yet one consumer per partition already owns the
-- partition's listings; nothing else races it for them. So the batch now locks what it
-- touches up front, decides every entry in log order against a running state held in
-- memory, and then writes each listing's row ONCE (the batch's stock taken, `version`
-- bumped once per order so that versions still count orders), each buyer's wallet once,
-- the orders in one INSERT, their events, their stored responses, and the partition's
-- last applied entry, all in the batch's one transaction.
--
-- Locks are taken in the schema's global order (order row, listing, wallets), across the
-- whole batch: all its listings by id, then all its buyers' wallets by user_id, before
-- anything is decided. A batch with several listings and buyers therefore never
-- deadlocks with another partition's batch or any other purchase, cancellation or
-- completion. The idempotency keys' advisory locks are only tried, never waited for.
--
-- Every entry gets the outcome it would have got from purchase_listing() run alone after
-- the entries before it: the same refusals (slug and detail, see purchase_refusal()),
-- the same replays (a key used earlier in the same batch is replayed, or refused as
-- reused, as if its response were stored already), and the same rows and events. A
-- failure that is not a refusal (a CHECK constraint, a malformed entry) aborts the whole
-- batch, which the consumer retries. purchase_listing() is unchanged: the other
-- strategies still use it.

-- Why `buyer` cannot buy `quantity` of listing `l` (the slug and detail that
-- purchase_refusal() raises, in the same order of checks), or NULLs when they can: the
-- checks answered rather than raised, so that deciding an entry needs no subtransaction.
CREATE FUNCTION purchase_refusal_reason(
    l listings, buyer bigint, quantity integer, OUT slug text, OUT detail text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF l.id IS NULL OR l.status = 'hidden' THEN
        slug := 'listing-not-found';
    ELSIF l.seller_id = buyer THEN
        slug := 'own-listing';
    ELSIF l.status = 'reserved' THEN
        slug := 'listing-not-on-sale';
    ELSIF l.status = 'sold' OR l.quantity < quantity THEN
        slug := 'insufficient-stock';
        detail := format('%s left', l.quantity);
    END IF;
END
$$;

-- The events of one order, in the order purchase_listing() writes them: the order to
-- both parties, the listing as it stood right after this order (`after`), and its
-- status change when this order sold it out.
CREATE FUNCTION purchase_order_events(
    body text, buyer bigint, after listings, quantity integer)
RETURNS TABLE (channel text, type text, data jsonb)
LANGUAGE sql STABLE AS $$
    SELECT 'user:' || buyer, 'order.paid', body::jsonb
    UNION ALL
    SELECT 'user:' || after.seller_id, 'order.paid', body::jsonb
    UNION ALL
    SELECT 'listing:' || after.id, 'listing.stock_changed',
           listing_event(after) || jsonb_build_object('old_quantity', after.quantity + quantity)
    UNION ALL
    SELECT 'listing:' || after.id, 'listing.status_changed',
           listing_event(after) || jsonb_build_object('old_status', 'on_sale')
    WHERE after.status = 'sold'
$$;

-- A waiting request's outcome when refused (the Python side maps the slug to its
-- problem, server/orders/purchase.py REFUSALS).
CREATE FUNCTION purchase_queue_refused(entry jsonb, slug text, detail text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('request', entry->>'request', 'refused', slug,
                              'detail', nullif(detail, ''))
$$;

-- A waiting request's outcome when answered (bought now, or replayed): its `body` is
-- added once known.
CREATE FUNCTION purchase_queue_answered(
    entry jsonb, replayed boolean, status integer, region text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('request', entry->>'request', 'replayed', replayed,
                              'status', status, 'region', region)
$$;

-- Apply a batch of entries (a JSON array of objects: entry, request, reply, buyer,
-- listing, quantity, key, fingerprint in hex, status) in log order, as one write per
-- listing and per wallet, and tell each waiting request its outcome by NOTIFY on its
-- reply channel, delivered when the batch commits. Entries at or before the partition's
-- last applied one are skipped. Returns how many were applied (refusals included).
CREATE OR REPLACE FUNCTION purchase_queue_apply(
    queue_partition integer, entries jsonb, key_ttl interval)
RETURNS integer LANGUAGE plpgsql AS $$
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
    -- The purchases decided, in log order: the order to place, the listing right after
    -- it, the entry it answers and the key it stores.
    placed orders[] := '{}';
    after listings[] := '{}';
    placed_entries jsonb[] := '{}';
    placed_keys text[] := '{}';
    bodies text[];
    -- Per entry: its outcome, and the purchase whose body answers it (bought or
    -- replayed from this batch), if any.
    replies jsonb[] := '{}';
    answered_by integer[] := '{}';
    -- The entry being decided.
    buyer bigint;
    wanted integer;
    entry_key text;
    entry_fingerprint bytea;
    stored idempotency_keys;
    listing listings;
    wallet wallets;
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
        fresh := fresh || entry;
        last := ROW(queue_partition, entry_ms, entry_seq);
    END LOOP;
    IF cardinality(fresh) = 0 THEN
        RETURN 0;
    END IF;

    -- Locks in the global order: every listing of the batch by id, then every buyer's
    -- wallet by user_id.
    FOR listing IN
        SELECT * FROM listings
        WHERE id IN (SELECT (e->>'listing')::bigint FROM unnest(fresh) e)
        ORDER BY id FOR UPDATE
    LOOP
        listing_ids := listing_ids || listing.id;
        stock := stock || listing;
    END LOOP;
    FOR wallet IN
        SELECT * FROM wallets
        WHERE user_id IN (SELECT (e->>'buyer')::bigint FROM unnest(fresh) e)
        ORDER BY user_id FOR UPDATE
    LOOP
        wallet_ids := wallet_ids || wallet.user_id;
        balances := balances || wallet.balance;
    END LOOP;

    -- Decide each entry in log order, as purchase_listing() would after the ones before.
    FOR i IN 1 .. cardinality(fresh) LOOP
        entry := fresh[i];
        buyer := (entry->>'buyer')::bigint;
        wanted := (entry->>'quantity')::integer;
        entry_key := entry->>'key';
        entry_fingerprint := decode(entry->>'fingerprint', 'hex');

        -- A key a purchase of this batch stored: as if its response were stored already.
        j := array_position(placed_keys, format('%s:%s', buyer, entry_key));
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
        -- One run per key at a time; a key already answered is answered again.
        IF NOT pg_try_advisory_xact_lock(hashtextextended(entry_key, buyer)) THEN
            replies[i] := purchase_queue_refused(entry, 'idempotency-key-in-flight', NULL);
            CONTINUE;
        END IF;
        SELECT * INTO stored FROM idempotency_keys k
        WHERE k.user_id = buyer AND k.key = entry_key AND k.expires_at > now();
        IF FOUND THEN
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
        SELECT * INTO refusal_slug, refusal_detail
        FROM purchase_refusal_reason(listing, buyer, wanted);
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
        placed_keys[j] := format('%s:%s', buyer, entry_key);
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
        -- The orders (the columns purchase_listing() writes, with the ids drawn above).
        INSERT INTO orders (id, listing_id, buyer_id, seller_id, quantity, unit_price, amount)
        OVERRIDING SYSTEM VALUE
        SELECT p.id, p.listing_id, p.buyer_id, p.seller_id, p.quantity, p.unit_price, p.amount
        FROM unnest(placed) p ORDER BY p.id;
        -- Each order as the API answers it: the response stored and replied.
        SELECT array_agg(api_order(x) ORDER BY p.ordinality) INTO bodies
        FROM unnest(placed) WITH ORDINALITY p JOIN orders x ON x.id = p.id;
        -- The events, in log order (outbox ids are drawn as the sorted rows are inserted).
        INSERT INTO outbox (channel, type, data)
        SELECT e.channel, e.type, e.data
        FROM generate_subscripts(placed, 1) n,
             purchase_order_events(bodies[n], (placed[n]).buyer_id, after[n],
                                   (placed[n]).quantity) WITH ORDINALITY e
        ORDER BY n, e.ordinality;
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
    END IF;

    -- Each waiting request's outcome, in log order (delivered when the batch commits).
    FOR i IN 1 .. cardinality(fresh) LOOP
        IF answered_by[i] IS NOT NULL THEN
            replies[i] := replies[i] || jsonb_build_object('body', bodies[answered_by[i]]);
        END IF;
        PERFORM pg_notify(fresh[i]->>'reply', replies[i]::text);
    END LOOP;
    INSERT INTO purchase_queue (partition, applied_ms, applied_seq)
    VALUES (queue_partition, last.applied_ms, last.applied_seq)
    ON CONFLICT (partition) DO UPDATE
        SET applied_ms = excluded.applied_ms, applied_seq = excluded.applied_seq;
    RETURN cardinality(fresh);
END
$$;
