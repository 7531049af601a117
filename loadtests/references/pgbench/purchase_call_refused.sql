-- For pgbench only, created by the purchase benchmark in its own database: the call of
-- purchase_listing() with the same arguments, a refusal (its slug, raised) returned
-- instead of raised, as jangteo turns it into a 409 and its buyer goes on. pgbench would
-- end the client at the error. A purchase pays one subtransaction more than the server's
-- call; an optimistic call refused (the listing kept changing) wrote nothing, so it ends
-- without a commit record to flush, as the server's refused call does.
CREATE OR REPLACE FUNCTION purchase_listing_refused(
    buyer bigint, listing_id bigint, quantity integer, take text, fence bigint,
    attempts integer, key text, fingerprint bytea, answer_status integer, key_ttl interval)
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM * FROM purchase_listing(buyer, listing_id, quantity, take, fence, attempts, key,
                                    fingerprint, answer_status, key_ttl);
    RETURN NULL;
EXCEPTION WHEN raise_exception THEN
    RETURN SQLERRM;
END
$$;
