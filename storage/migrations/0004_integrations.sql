-- Integrations (issue 15): apps and their bot users, incoming webhooks, slash commands,
-- response URLs, and the outbox of events delivered to apps. docs/integrations.md.

-- What an app posted carries its blocks (Slack Block Kit subset, validated by
-- gateway/integrations/blocks.py) and who it shows as (the app, a webhook's username/icon).
ALTER TABLE chat_messages
    ADD COLUMN blocks      jsonb,
    ADD COLUMN app_id      text,
    ADD COLUMN bot_profile jsonb;

-- An app: its bot user posts as itself. The bot token is stored as its SHA-256 only (shown
-- once); the signing secret AES-256-GCM encrypted (storage/crypto.py, aad names the app).
CREATE TABLE integ_apps (
    id                  text        PRIMARY KEY,
    name                text        NOT NULL,
    bot_user_id         text        NOT NULL REFERENCES chat_users (id),
    token_hash          bytea       NOT NULL UNIQUE,
    signing_secret_enc  bytea       NOT NULL,
    commands_url        text        NOT NULL DEFAULT '',
    interactivity_url   text        NOT NULL DEFAULT '',
    events_url          text        NOT NULL DEFAULT '',
    -- Slack event types delivered to events_url (message, reaction_added, ...).
    events              text[]      NOT NULL DEFAULT '{}',
    -- Channels the bot may post to; empty = any channel its bot user is a member of.
    channels            text[]      NOT NULL DEFAULT '{}',
    -- Who may click the app's buttons: channel readers, or workspace admins only.
    click_policy        text        NOT NULL DEFAULT 'members'
                                    CHECK (click_policy IN ('members', 'admins')),
    enabled             boolean     NOT NULL DEFAULT true,
    created_by          text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX integ_apps_name_idx ON integ_apps (lower(name));

-- Slash commands an app serves (/ticket ...), routed to the app's commands_url.
CREATE TABLE integ_commands (
    command     text        PRIMARY KEY,
    app_id      text        NOT NULL REFERENCES integ_apps (id),
    description text        NOT NULL DEFAULT '',
    usage_hint  text        NOT NULL DEFAULT ''
);

-- Incoming webhooks: POST /hooks/<id>/<token>; the token is stored as its SHA-256.
CREATE TABLE integ_hooks (
    id          text        PRIMARY KEY,
    app_id      text        NOT NULL REFERENCES integ_apps (id),
    channel_id  text        NOT NULL REFERENCES chat_channels (id),
    token_hash  bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- response_url of a slash command or a click: a few uses within a short time.
CREATE TABLE integ_response_urls (
    token_hash  bytea       PRIMARY KEY,
    app_id      text        NOT NULL REFERENCES integ_apps (id),
    channel_id  text        NOT NULL,
    user_id     text        NOT NULL,
    message_id  bigint,
    uses_left   integer     NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- Events for apps, written in the transaction of the chat write they report, delivered by
-- gateway/integrations/outbox.py in id order per (app, channel).
CREATE TABLE integ_outbox (
    id           bigint      PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    app_id       text        NOT NULL REFERENCES integ_apps (id),
    channel_id   text        NOT NULL,
    event        jsonb       NOT NULL,
    state        text        NOT NULL DEFAULT 'pending'
                             CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts     integer     NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    leased_until timestamptz,
    last_error   text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX integ_outbox_pending_idx ON integ_outbox (app_id, channel_id, id)
    WHERE state = 'pending';
CREATE INDEX integ_outbox_dead_idx ON integ_outbox (app_id, id) WHERE state = 'dead';
