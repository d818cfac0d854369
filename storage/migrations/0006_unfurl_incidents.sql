-- Issue 15, items 7-9: link previews on messages, incident war rooms, huddles.
-- docs/integrations.md.

-- Link previews (Open Graph / oEmbed pages, Prism charts, file metadata) attached to a
-- message after it was sent; NULL: none (yet). They are not part of the message's versions:
-- an edit re-runs the previews for the new text.
ALTER TABLE chat_messages ADD COLUMN previews jsonb;

-- An incident's war room: a private channel named from the ticket, archived on resolve.
CREATE TABLE integ_incidents (
    id                  text        PRIMARY KEY,
    ticket_id           text        NOT NULL UNIQUE,
    title               text        NOT NULL,
    priority            integer     NOT NULL CHECK (priority BETWEEN 1 AND 5),
    channel_id          text        NOT NULL REFERENCES chat_channels (id),
    responders          text[]      NOT NULL,
    summary_message_id  bigint      REFERENCES chat_messages (id),
    -- Who opened it: an app (its bots may resolve it) or a person / the API key.
    app_id              text        REFERENCES integ_apps (id),
    created_by          text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    resolved_by         text,
    resolved_at         timestamptz
);

-- A huddle: a meeting started in a channel, its Join message, who is in it.
CREATE TABLE integ_huddles (
    id          text        PRIMARY KEY,
    channel_id  text        NOT NULL REFERENCES chat_channels (id),
    url         text        NOT NULL,
    message_id  bigint      REFERENCES chat_messages (id),
    started_by  text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_by    text,
    ended_at    timestamptz
);
-- At most one live huddle per channel (a second start joins the first).
CREATE UNIQUE INDEX integ_huddles_live_idx ON integ_huddles (channel_id) WHERE ended_at IS NULL;

-- Participants while they are in; the status they had before is put back when they leave.
CREATE TABLE integ_huddle_participants (
    huddle_id    text        NOT NULL REFERENCES integ_huddles (id),
    user_id      text        NOT NULL REFERENCES chat_users (id),
    joined_at    timestamptz NOT NULL DEFAULT now(),
    left_at      timestamptz,
    prev_text    text        NOT NULL DEFAULT '',
    prev_emoji   text        NOT NULL DEFAULT '',
    prev_until   timestamptz,
    PRIMARY KEY (huddle_id, user_id)
);
