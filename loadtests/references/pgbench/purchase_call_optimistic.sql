-- Reference: jangteo's own purchase, the optimistic strategy: the one call of
-- purchase_listing() the server makes (server/orders/purchase.py), outside any explicit
-- transaction, with the same arguments: quantity 1, take 'version', no fence, 8
-- attempts, a random key with its fingerprint, status 201, the key kept 24 hours.
-- pgbench ends a client at its first error, where jangteo answers a refusal with 409 and
-- the buyer goes on; this strategy's calls are refused often under contention (the listing
-- kept changing), so the call goes through purchase_listing_refused(), which returns the
-- refusal instead of raising it (purchase_call_refused.sql, created by the benchmark).
-- Ids: a random buyer in first_buyer..last_buyer and listing in first_listing..last_listing.
-- The purchase benchmark writes these four in as numbers; by hand, give them to pgbench:
--   pgbench -n -M prepared -D first_buyer=2 -D last_buyer=501 \
--     -D first_listing=900000001 -D last_listing=900000001 -f this-file URL
\set buyer random(:first_buyer, :last_buyer)
\set listing random(:first_listing, :last_listing)
\set k random(1, 9000000000000000000)
SELECT purchase_listing_refused(:buyer, :listing, 1, 'version', NULL, 8, :k::text, sha256(convert_to(:k::text, 'UTF8')), 201, interval '24 hours');
