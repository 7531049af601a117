-- Accounts: users and their refresh-token families.

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text        NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    password_hash text        NOT NULL,
    nickname      text        NOT NULL CHECK (char_length(nickname) BETWEEN 1 AND 30),
    region        text        NOT NULL CHECK (region ~ '^[a-z][a-z0-9-]{1,39}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Emails are stored lower-cased; the index makes uniqueness case-insensitive anyway.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- One row per refresh token ever issued. A family is one login session: every
-- rotation adds a row to it, and presenting an already rotated token revokes it whole.
CREATE TABLE refresh_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   uuid        NOT NULL,
    token_hash  bytea       NOT NULL UNIQUE,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz,
    revoked_at  timestamptz
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);
