-- The trace context of the change that wrote an outbox row: the W3C `traceparent` of the
-- span that was current (the HTTP request's), so that the relay's publish and every
-- instance's delivery of the event can link back to that trace (docs/tracing.md).
--
-- NULL when tracing is off, for rows written before this column existed, and for writes
-- that are not sampled: such rows relay exactly as before. Python writers give it
-- explicitly; SQL that writes events itself (the purchase functions) gets it from the
-- transaction's `jangteo.trace_context` setting, which purchase_listing_traced() sets.
-- Without that setting current_setting() answers NULL (or '' once a transaction of the
-- session set and dropped it), so the default costs a lookup and nothing else.
ALTER TABLE outbox ADD COLUMN trace_context text
    DEFAULT nullif(current_setting('jangteo.trace_context', true), '');

-- purchase_listing() with its events linked to `trace_context`: the setting is local to
-- the one statement's transaction, so nothing else of the session inherits it.
CREATE FUNCTION purchase_listing_traced(
    trace_context text, buyer bigint, listing_id bigint, quantity integer, take text,
    fence bigint, attempts integer, key text, fingerprint bytea, answer_status integer,
    key_ttl interval)
RETURNS TABLE (replayed boolean, status_code integer, body text, region text,
               seller_id bigint, retries integer)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('jangteo.trace_context', $1, true);
    RETURN QUERY SELECT * FROM purchase_listing($2, $3, $4, $5, $6, $7, $8, $9, $10, $11);
END
$$;
