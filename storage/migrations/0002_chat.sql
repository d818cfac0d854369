-- The chat product (issue 5): users, channels, memberships, messages and their versions,
-- reactions, pins, thread follows, user status. Real-time events about these rows travel
-- as durable publications (0001) in the channel `chat:<channel id>`.

-- id is the JWT `sub`. The e-mail is stored encrypted (AES-256-GCM, storage/crypto.py).
CREATE TABLE chat_users (
    id              text        PRIMARY KEY,
    display_name    text        NOT NULL DEFAULT '',
    email_enc       bytea,
    title           text        NOT NULL DEFAULT '',
    manager         text        NOT NULL DEFAULT '',
    role            text        NOT NULL DEFAULT 'member'
                                CHECK (role IN ('owner', 'admin', 'member', 'guest')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Away / Do Not Disturb / custom status, each with its own expiry (NULL = no expiry).
CREATE TABLE chat_user_status (
    user_id         text        PRIMARY KEY REFERENCES chat_users (id),
    away            boolean     NOT NULL DEFAULT false,
    dnd_until       timestamptz,
    status_text     text        NOT NULL DEFAULT '',
    status_emoji    text        NOT NULL DEFAULT '',
    status_until    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chat_channels (
    id              text        PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('public', 'private', 'dm', 'group_dm')),
    name            text        NOT NULL DEFAULT '',
    topic           text        NOT NULL DEFAULT '',
    archived        boolean     NOT NULL DEFAULT false,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_message_id bigint      NOT NULL DEFAULT 0
);

-- Public and private channel names are unique among themselves (DMs have no name).
CREATE UNIQUE INDEX chat_channels_name_idx ON chat_channels (lower(name))
    WHERE kind IN ('public', 'private');

CREATE TABLE chat_members (
    channel_id      text        NOT NULL REFERENCES chat_channels (id),
    user_id         text        NOT NULL REFERENCES chat_users (id),
    role            text        NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    muted           boolean     NOT NULL DEFAULT false,
    last_read_id    bigint      NOT NULL DEFAULT 0,
    joined_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, user_id)
);

CREATE INDEX chat_members_user_idx ON chat_members (user_id);

-- Message ids come from one sequence: increasing in commit-ish order, global, so a page
-- cursor is just an id.
CREATE TABLE chat_messages (
    id              bigint      PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    channel_id      text        NOT NULL REFERENCES chat_channels (id),
    author_id       text        NOT NULL,
    client_msg_id   text,
    text            text        NOT NULL,
    rendered        jsonb       NOT NULL DEFAULT '[]',
    -- Mentioned user ids, plus '@channel' / '@here': unread mention counts.
    mentions        text[]      NOT NULL DEFAULT '{}',
    thread_parent   bigint      REFERENCES chat_messages (id),
    also_to_channel boolean     NOT NULL DEFAULT false,
    reply_count     integer     NOT NULL DEFAULT 0,
    reply_users     text[]      NOT NULL DEFAULT '{}',
    last_reply_at   timestamptz,
    version         integer     NOT NULL DEFAULT 1,
    edited_at       timestamptz,
    deleted         boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Channel timeline (top level and broadcast thread replies), paged by id.
CREATE INDEX chat_messages_channel_idx ON chat_messages (channel_id, id)
    WHERE thread_parent IS NULL OR also_to_channel;
CREATE INDEX chat_messages_thread_idx ON chat_messages (thread_parent, id)
    WHERE thread_parent IS NOT NULL;
-- messages.send is idempotent on (author, client message id).
CREATE UNIQUE INDEX chat_messages_client_id_idx ON chat_messages (author_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

-- Every prior version of a message (text before an edit or a delete).
CREATE TABLE chat_message_versions (
    message_id      bigint      NOT NULL REFERENCES chat_messages (id),
    version         integer     NOT NULL,
    text            text        NOT NULL,
    rendered        jsonb       NOT NULL DEFAULT '[]',
    editor_id       text        NOT NULL,
    replaced_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, version)
);

CREATE TABLE chat_reactions (
    message_id      bigint      NOT NULL REFERENCES chat_messages (id),
    user_id         text        NOT NULL,
    emoji           text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, user_id, emoji)
);

CREATE TABLE chat_pins (
    channel_id      text        NOT NULL REFERENCES chat_channels (id),
    message_id      bigint      NOT NULL REFERENCES chat_messages (id),
    pinned_by       text        NOT NULL,
    pinned_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, message_id)
);

CREATE TABLE chat_thread_follows (
    message_id      bigint      NOT NULL REFERENCES chat_messages (id),
    user_id         text        NOT NULL,
    PRIMARY KEY (message_id, user_id)
);

CREATE INDEX chat_thread_follows_user_idx ON chat_thread_follows (user_id);
