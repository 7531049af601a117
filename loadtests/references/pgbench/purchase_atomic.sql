-- Reference: the atomic purchase transaction as jangteo ran it before a purchase
-- became one call of purchase_listing(), statement for statement (generated then from
-- its db/queries functions, frozen since): what the one-call purchase is measured
-- against. What the server decided in Python (stock left, version matched, balance
-- covered) is \if on what the statements return; idempotency keys are random integers.
-- Ids: a random buyer in first_buyer..last_buyer and listing in first_listing..last_listing.
-- The purchase benchmark writes these four in as numbers; by hand, give them to pgbench:
--   pgbench -n -M prepared -D first_buyer=2 -D last_buyer=501 \
--     -D first_listing=900000001 -D last_listing=900000001 -f this-file URL
\set buyer random(:first_buyer, :last_buyer)
\set listing random(:first_listing, :last_listing)
\set k random(1, 9000000000000000000)
BEGIN;
SELECT pg_try_advisory_xact_lock(hashtextextended(:k::text, :buyer));
SELECT fingerprint, status_code, response_body FROM idempotency_keys WHERE user_id = :buyer AND key = :k::text AND expires_at > now();
\set l_version 0
UPDATE listings SET quantity = quantity - 1, status = CASE WHEN quantity = 1 THEN 'sold' ELSE status END, fence = coalesce(NULL::bigint, fence), version = version + 1, updated_at = now() WHERE id = :listing AND status = 'on_sale' AND seller_id <> :buyer AND quantity >= 1 AND (NULL::bigint::bigint IS NULL OR fence < NULL::bigint) RETURNING id, seller_id, title, price, quantity, category, region, status, like_count, version, fence \aset l_
\if :l_version = 0
ROLLBACK;
\else
\set amount :l_price * 1
\set w_balance -1
UPDATE wallets SET balance = balance - :amount::bigint, updated_at = now() WHERE user_id = :buyer AND balance >= :amount::bigint RETURNING balance \aset w_
\if :w_balance < 0
ROLLBACK;
\else
INSERT INTO orders (listing_id, buyer_id, seller_id, quantity, unit_price, amount) VALUES (:l_id, :buyer, :l_seller_id, 1::int, :l_price::bigint, 1::int * :l_price::bigint) RETURNING id, listing_id, buyer_id, seller_id, quantity, unit_price, amount, status, created_at, updated_at \gset o_
\startpipeline
INSERT INTO outbox (channel, type, data) VALUES ('user:' || :buyer, 'order.paid', jsonb_build_object('id', :o_id::bigint, 'listing_id', :o_listing_id::bigint, 'buyer_id', :o_buyer_id::bigint, 'seller_id', :o_seller_id::bigint, 'quantity', :o_quantity::int, 'unit_price', :o_unit_price::bigint, 'amount', :o_amount::bigint, 'status', :o_status::text, 'created_at', :o_created_at::timestamptz, 'updated_at', :o_updated_at::timestamptz));
INSERT INTO outbox (channel, type, data) VALUES ('user:' || :l_seller_id, 'order.paid', jsonb_build_object('id', :o_id::bigint, 'listing_id', :o_listing_id::bigint, 'buyer_id', :o_buyer_id::bigint, 'seller_id', :o_seller_id::bigint, 'quantity', :o_quantity::int, 'unit_price', :o_unit_price::bigint, 'amount', :o_amount::bigint, 'status', :o_status::text, 'created_at', :o_created_at::timestamptz, 'updated_at', :o_updated_at::timestamptz));
INSERT INTO outbox (channel, type, data) VALUES ('listing:' || :l_id, 'listing.stock_changed', jsonb_build_object('id', :l_id::bigint, 'seller_id', :l_seller_id::bigint, 'title', :l_title::text, 'price', :l_price::bigint, 'quantity', :l_quantity::int, 'category', :l_category::text, 'region', :l_region::text, 'status', :l_status::text, 'like_count', :l_like_count::int, 'version', :l_version::int, 'old_quantity', :l_quantity::int + 1));
\endpipeline
\if :l_quantity = 0
INSERT INTO outbox (channel, type, data) VALUES ('listing:' || :l_id, 'listing.status_changed', jsonb_build_object('id', :l_id::bigint, 'seller_id', :l_seller_id::bigint, 'title', :l_title::text, 'price', :l_price::bigint, 'quantity', :l_quantity::int, 'category', :l_category::text, 'region', :l_region::text, 'status', :l_status::text, 'like_count', :l_like_count::int, 'version', :l_version::int, 'old_status', 'on_sale'::text));
\endif
INSERT INTO idempotency_keys (user_id, key, fingerprint, status_code, response_body, expires_at) VALUES (:buyer, :k::text, sha256(convert_to(:k::text, 'UTF8')), 201, convert_to(json_build_object('id', :o_id::bigint, 'listing_id', :o_listing_id::bigint, 'buyer_id', :o_buyer_id::bigint, 'seller_id', :o_seller_id::bigint, 'quantity', :o_quantity::int, 'unit_price', :o_unit_price::bigint, 'amount', :o_amount::bigint, 'status', :o_status::text, 'created_at', :o_created_at::timestamptz, 'updated_at', :o_updated_at::timestamptz)::text, 'UTF8'), now() + interval '86400 seconds') ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, status_code = excluded.status_code, response_body = excluded.response_body, created_at = now(), expires_at = excluded.expires_at;
COMMIT;
\endif
\endif
