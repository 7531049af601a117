-- Listings, their photos and likes, and the transactional outbox of events.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE listings (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seller_id   bigint      NOT NULL REFERENCES users (id),
    title       text        NOT NULL CHECK (char_length(title) BETWEEN 1 AND 100),
    description text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 5000),
    price       bigint      NOT NULL CHECK (price BETWEEN 0 AND 10000000000),
    quantity    integer     NOT NULL DEFAULT 1 CHECK (quantity BETWEEN 0 AND 10000),
    category    text        NOT NULL CHECK (category IN (
                    'digital', 'appliances', 'furniture', 'kids', 'fashion', 'beauty', 'sports',
                    'hobby', 'books', 'pets', 'plants', 'food', 'tickets', 'etc')),
    region      text        NOT NULL CHECK (region ~ '^[a-z][a-z0-9-]{1,39}$'),
    status      text        NOT NULL DEFAULT 'on_sale'
                            CHECK (status IN ('on_sale', 'reserved', 'sold', 'hidden')),
    like_count  integer     NOT NULL DEFAULT 0 CHECK (like_count >= 0),
    version     integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The feed is newest first by id (ids grow with creation), paged by keyset on id.
-- Hidden listings never show in a feed, so the feed indexes leave them out.
CREATE INDEX listings_region_feed_idx ON listings (region, id DESC) WHERE status <> 'hidden';
CREATE INDEX listings_region_status_idx ON listings (region, status, id DESC);
CREATE INDEX listings_region_category_idx ON listings (region, category, id DESC)
    WHERE status <> 'hidden';
CREATE INDEX listings_category_idx ON listings (category, id DESC) WHERE status <> 'hidden';
CREATE INDEX listings_seller_idx ON listings (seller_id, id DESC);
CREATE INDEX listings_region_price_idx ON listings (region, price) WHERE status <> 'hidden';
-- Substring search over title and description; trigrams work for Hangul too.
CREATE INDEX listings_search_idx ON listings
    USING gin ((title || ' ' || description) gin_trgm_ops);

CREATE TABLE listing_photos (
    id           uuid        PRIMARY KEY,
    listing_id   bigint      NOT NULL REFERENCES listings (id) ON DELETE CASCADE,
    object_key   text        NOT NULL UNIQUE,
    content_type text        NOT NULL,
    size_bytes   integer     NOT NULL CHECK (size_bytes > 0),
    status       text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'ready')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);

CREATE INDEX listing_photos_listing_idx ON listing_photos (listing_id, created_at);

CREATE TABLE listing_likes (
    listing_id bigint      NOT NULL REFERENCES listings (id) ON DELETE CASCADE,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (listing_id, user_id)
);

CREATE INDEX listing_likes_user_idx ON listing_likes (user_id, created_at DESC);

-- Transactional outbox: every event clients may see is written here in the same
-- transaction as the change. Ids are the offsets clients resume from. txid lets a
-- relay publish only rows below the oldest running transaction, so a transaction
-- that commits late with a smaller id is never skipped.
CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel      text        NOT NULL,
    type         text        NOT NULL,
    data         jsonb       NOT NULL,
    txid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

CREATE INDEX outbox_channel_idx ON outbox (channel, id);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_created_idx ON outbox (created_at);
