-- Reference: jangteo's own purchase, the atomic strategy: the one call of
-- purchase_listing() the server makes (server/orders/purchase.py), outside any explicit
-- transaction, with the same arguments: quantity 1, take 'atomic', no fence, 8
-- attempts, a random key with its fingerprint, status 201, the key kept 24 hours.
-- Ids: a random buyer in first_buyer..last_buyer and listing in first_listing..last_listing.
-- The purchase benchmark writes these four in as numbers; by hand, give them to pgbench:
--   pgbench -n -M prepared -D first_buyer=2 -D last_buyer=501 \
--     -D first_listing=900000001 -D last_listing=900000001 -f this-file URL
\set buyer random(:first_buyer, :last_buyer)
\set listing random(:first_listing, :last_listing)
\set k random(1, 9000000000000000000)
SELECT * FROM purchase_listing(:buyer, :listing, 1, 'atomic', NULL, 8, :k::text, sha256(convert_to(:k::text, 'UTF8')), 201, interval '24 hours');
