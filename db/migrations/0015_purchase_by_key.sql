-- purchase_listing() reads every row it touches by its key: the listing by id, the
-- wallet by user, the stored response by (user, key). A pooled connection keeps the
-- plans of the function's statements for its whole life, and PostgreSQL settles on a
-- generic plan after a few calls, costed on the table sizes of that moment. Made while
-- the stored responses were few (a new database) or the listing's table was one page, it
-- read those tables whole at every purchase from then on: the stored responses grow by
-- one per purchase, and a hot listing's page by a dead row version per purchase, so each
-- purchase read more than the one before, the hot one while holding the listing's row
-- lock. Sequential scans are therefore off inside the function: each statement reads by
-- its index whatever the statistics say (its plans are the same once the statistics are
-- current).
ALTER FUNCTION purchase_listing(
    bigint, bigint, integer, text, bigint, integer, text, bytea, integer, interval)
    SET enable_seqscan = off;
