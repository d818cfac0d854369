-- Local accounts (issue 13): a team signs in with a password without an identity provider.
-- One row per chat user that may sign in locally; the profile stays in chat_users.

CREATE TABLE chat_accounts (
    user_id         text        PRIMARY KEY REFERENCES chat_users (id),
    -- HMAC of the lower-cased e-mail (storage/accounts.py): sign-in by e-mail without
    -- storing the address in clear (chat_users.email_enc holds it encrypted).
    email_index     text        UNIQUE,
    -- argon2id, PHC string format (argon2-cffi); NULL until the invitation is accepted.
    password_hash   text,
    -- SHA-256 of the one-time invitation token; cleared when used.
    invite_hash     text        UNIQUE,
    invite_expires  timestamptz,
    disabled        boolean     NOT NULL DEFAULT false,
    password_set_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Refresh tokens (stored as SHA-256): each is used once and replaced by the next of its
-- family; presenting a used one again revokes the whole family (a stolen copy was used).
CREATE TABLE chat_refresh_tokens (
    token_hash      text        PRIMARY KEY,
    user_id         text        NOT NULL REFERENCES chat_accounts (user_id),
    family          text        NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    revoked         boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX chat_refresh_tokens_user_idx ON chat_refresh_tokens (user_id);
CREATE INDEX chat_refresh_tokens_family_idx ON chat_refresh_tokens (family);

-- The user directory (name prefix search, paged by name then id).
CREATE INDEX chat_users_name_idx ON chat_users (lower(display_name) text_pattern_ops, id);
