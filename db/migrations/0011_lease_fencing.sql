-- Fencing by lease: a token per taking of the Redis lock, not per purchase.
--
-- The redis_lock strategy takes a listing's lock with one fencing token and, while it
-- holds it, lets several purchases of that process run at once under the same token
-- (server/orders/locks.py): PostgreSQL queues them on the listing's row, as it does for
-- any concurrent buyers, with no round trip to the process between them. So a write is
-- accepted when its token is at least the last one written (the same holder, or a newer
-- one), and refused as stale only when a newer holder has written since. The function
-- is 0008's otherwise, line for line.
--
-- take: how the stock is taken.
--   atomic   one conditional UPDATE decides (on sale, not one's own, enough left);
--   fenced   the same, and the Redis lock's fencing token must be no older than the last;
--   locked   SELECT ... FOR UPDATE, checked, then written (pessimistic);
--   version  read without a lock, written only if the version is unchanged, read again
--            and retried on a miss, at most `attempts` times (optimistic).
-- Refusals are raised (MESSAGE: the problem's slug), so that nothing they follow stays.
CREATE OR REPLACE FUNCTION purchase_listing(
    buyer bigint, listing_id bigint, quantity integer, take text, fence bigint,
    attempts integer, key text, fingerprint bytea, answer_status integer, key_ttl interval,
    OUT replayed boolean, OUT status_code integer, OUT body text, OUT region text,
    OUT seller_id bigint, OUT retries integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    stored idempotency_keys;
    before listings;
    after listings;
    placed orders;
    wanted integer := quantity;
    order_json jsonb;
BEGIN
    IF take NOT IN ('atomic', 'fenced', 'locked', 'version') THEN
        RAISE EXCEPTION 'unknown way to take stock: %', take USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- One run per key at a time; a key already answered is answered again.
    IF NOT pg_try_advisory_xact_lock(hashtextextended(key, buyer)) THEN
        RAISE EXCEPTION 'idempotency-key-in-flight';
    END IF;
    SELECT * INTO stored FROM idempotency_keys k
    WHERE k.user_id = buyer AND k.key = purchase_listing.key AND k.expires_at > now();
    IF FOUND THEN
        IF stored.fingerprint <> purchase_listing.fingerprint THEN
            RAISE EXCEPTION 'idempotency-key-reused';
        END IF;
        replayed := true;
        status_code := stored.status_code;
        body := convert_from(stored.response_body, 'UTF8');
        RETURN;
    END IF;

    retries := 0;
    LOOP
        IF take = 'locked' THEN
            SELECT * INTO before FROM listings WHERE id = listing_id FOR UPDATE;
        ELSE
            SELECT * INTO before FROM listings WHERE id = listing_id;
        END IF;
        PERFORM purchase_refusal(before, buyer, wanted);
        IF take = 'locked' THEN
            UPDATE listings l SET quantity = l.quantity - wanted,
                status = CASE WHEN l.quantity = wanted THEN 'sold' ELSE l.status END,
                version = l.version + 1, updated_at = now()
            WHERE l.id = listing_id
            RETURNING * INTO after;
        ELSIF take = 'version' THEN
            UPDATE listings l SET quantity = l.quantity - wanted,
                status = CASE WHEN l.quantity = wanted THEN 'sold' ELSE l.status END,
                version = l.version + 1, updated_at = now()
            WHERE l.id = listing_id AND l.version = before.version
            RETURNING * INTO after;
        ELSE
            UPDATE listings l SET quantity = l.quantity - wanted,
                status = CASE WHEN l.quantity = wanted THEN 'sold' ELSE l.status END,
                fence = coalesce(purchase_listing.fence, l.fence),
                version = l.version + 1, updated_at = now()
            WHERE l.id = listing_id AND l.status = 'on_sale' AND l.seller_id <> buyer
              AND l.quantity >= wanted
              AND (purchase_listing.fence IS NULL OR l.fence <= purchase_listing.fence)
            RETURNING * INTO after;
        END IF;
        EXIT WHEN after.id IS NOT NULL;
        IF take = 'version' THEN
            retries := retries + 1;
            IF retries >= attempts THEN
                RAISE EXCEPTION 'purchase-conflict'
                    USING DETAIL = format('the listing kept changing (%s attempts)', attempts);
            END IF;
            CONTINUE;
        END IF;
        -- The conditional UPDATE refused: say why, as of now.
        SELECT * INTO before FROM listings WHERE id = listing_id;
        PERFORM purchase_refusal(before, buyer, wanted);
        IF take = 'fenced' AND before.fence > purchase_listing.fence THEN
            RAISE EXCEPTION 'stale-fence' USING DETAIL = before.fence::text;
        END IF;
        RAISE EXCEPTION 'insufficient-stock';
    END LOOP;

    UPDATE wallets w SET balance = w.balance - after.price * wanted, updated_at = now()
    WHERE w.user_id = buyer AND w.balance >= after.price * wanted;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'insufficient-funds' USING DETAIL = format('%s needed', after.price * wanted);
    END IF;
    INSERT INTO orders (listing_id, buyer_id, seller_id, quantity, unit_price, amount)
    VALUES (listing_id, buyer, after.seller_id, wanted, after.price, after.price * wanted)
    RETURNING * INTO placed;
    body := api_order(placed);
    order_json := body::jsonb;
    INSERT INTO outbox (channel, type, data) VALUES
        ('user:' || buyer, 'order.paid', order_json),
        ('user:' || after.seller_id, 'order.paid', order_json),
        ('listing:' || listing_id, 'listing.stock_changed',
         listing_event(after) || jsonb_build_object('old_quantity', after.quantity + wanted));
    IF after.status = 'sold' THEN
        INSERT INTO outbox (channel, type, data) VALUES
            ('listing:' || listing_id, 'listing.status_changed',
             listing_event(after) || jsonb_build_object('old_status', 'on_sale'));
    END IF;
    INSERT INTO idempotency_keys AS k
        (user_id, key, fingerprint, status_code, response_body, expires_at)
    VALUES (buyer, purchase_listing.key, purchase_listing.fingerprint, answer_status,
            convert_to(body, 'UTF8'), now() + key_ttl)
    ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint,
        status_code = excluded.status_code, response_body = excluded.response_body,
        created_at = now(), expires_at = excluded.expires_at;
    replayed := false;
    status_code := answer_status;
    region := after.region;
    seller_id := after.seller_id;
END
$$;
