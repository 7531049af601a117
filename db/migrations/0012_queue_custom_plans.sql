-- The queue's consumer plans the statements of purchase_queue_apply at every call.
--
-- PL/pgSQL keeps a generic plan of a statement after a few calls. One made while a table
-- was empty, and analyzed so (a new database, or one whose idempotency keys all expired),
-- reads that table whole for every entry of every batch, and is kept until the next
-- ANALYZE: a batch then costs in proportion to everything stored, not to its own size.
-- A batch is one call for many purchases, so planning at each call is cheap beside it.
ALTER FUNCTION purchase_queue_apply(integer, jsonb, interval)
    SET plan_cache_mode = force_custom_plan;
