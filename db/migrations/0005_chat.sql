-- Chat between a listing's seller and one buyer: one room per (listing, buyer),
-- messages numbered per room, and a read marker per participant.

CREATE TABLE chat_rooms (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    listing_id       bigint      NOT NULL REFERENCES listings (id),
    buyer_id         bigint      NOT NULL REFERENCES users (id),
    seller_id        bigint      NOT NULL REFERENCES users (id),
    last_message_id  bigint      NOT NULL DEFAULT 0,   -- the per-room message counter
    buyer_read_up_to  bigint     NOT NULL DEFAULT 0,
    seller_read_up_to bigint     NOT NULL DEFAULT 0,
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (listing_id, buyer_id),
    -- A seller never chats with themselves about their own listing.
    CHECK (buyer_id <> seller_id),
    CHECK (buyer_read_up_to BETWEEN 0 AND last_message_id),
    CHECK (seller_read_up_to BETWEEN 0 AND last_message_id)
);

-- "My rooms, newest activity first", for either side.
CREATE INDEX chat_rooms_buyer_idx ON chat_rooms (buyer_id, last_activity_at DESC, id DESC);
CREATE INDEX chat_rooms_seller_idx ON chat_rooms (seller_id, last_activity_at DESC, id DESC);

CREATE TABLE chat_messages (
    room_id    bigint      NOT NULL REFERENCES chat_rooms (id),
    id         bigint      NOT NULL,                 -- 1, 2, 3... within the room
    sender_id  bigint      NOT NULL REFERENCES users (id),
    body       text        NOT NULL CHECK (char_length(body) BETWEEN 1 AND 1000),
    client_id  uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, id),
    -- A message sent again with the same client_id is the same message.
    UNIQUE (room_id, sender_id, client_id)
);
