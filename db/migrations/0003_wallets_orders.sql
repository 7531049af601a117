-- Wallets, top-ups, orders with escrow, and idempotency keys for money-moving requests.

CREATE TABLE wallets (
    user_id    bigint      PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    balance    bigint      NOT NULL DEFAULT 0 CHECK (balance >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO wallets (user_id) SELECT id FROM users;

-- Money enters only through top-ups (a simulated payment provider), so
-- sum(wallets.balance) + sum(escrow of paid orders) = sum(topups.amount), always.
CREATE TABLE topups (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    amount     bigint      NOT NULL CHECK (amount BETWEEN 1 AND 10000000),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX topups_user_idx ON topups (user_id);

CREATE TABLE orders (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    listing_id   bigint      NOT NULL REFERENCES listings (id),
    buyer_id     bigint      NOT NULL REFERENCES users (id),
    seller_id    bigint      NOT NULL REFERENCES users (id),
    quantity     integer     NOT NULL CHECK (quantity BETWEEN 1 AND 10000),
    unit_price   bigint      NOT NULL CHECK (unit_price >= 0),
    amount       bigint      NOT NULL CHECK (amount >= 0),
    status       text        NOT NULL DEFAULT 'paid'
                             CHECK (status IN ('paid', 'completed', 'cancelled')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (buyer_id <> seller_id),
    CHECK (amount = quantity * unit_price)
);

CREATE INDEX orders_buyer_idx ON orders (buyer_id, id DESC);
CREATE INDEX orders_seller_idx ON orders (seller_id, id DESC);
CREATE INDEX orders_listing_idx ON orders (listing_id);

-- Fencing token of the redis_lock purchase strategy: a write carrying an older token
-- than the last one applied is refused, so an expired Redis lock cannot oversell.
ALTER TABLE listings ADD COLUMN fence bigint NOT NULL DEFAULT 0;

-- The first response to a money-moving request, stored in the same transaction as its
-- effect; replayed for the same key and body, refused for another body.
CREATE TABLE idempotency_keys (
    user_id       bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key           text        NOT NULL,
    fingerprint   bytea       NOT NULL,
    status_code   integer     NOT NULL,
    response_body bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);

CREATE INDEX idempotency_keys_expiry_idx ON idempotency_keys (expires_at);
