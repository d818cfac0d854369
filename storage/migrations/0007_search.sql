-- Search (issue 14, docs/search.md): a search vector on every chat message, maintained by a
-- trigger in the transaction of the write itself (a message is findable the moment its send
-- commits), and trigram indexes for finding channels and people by name.
--
-- Everything here is instant on a table of any size (a column without a default, a
-- trigger, functions), except the backfill and the indexes: on a small table (a new
-- workspace, the tests) they are done right here; on a big one this migration leaves them
-- to `sentchat migrate`, which fills the vectors in batches of rows (one short transaction
-- each, so sends keep flowing) and then builds the indexes CONCURRENTLY (storage/search.py,
-- SearchIndexer), reporting how far it got.

-- unaccent (accent-insensitive matching) and pg_trgm (typo-tolerant names) ship with
-- PostgreSQL's contrib, and with the embedded PostgreSQL; a server without them (or without
-- the right to create them) still gets search, minus those two features.
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS unaccent;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'search: unaccent not available (%), matching stays accent-sensitive', SQLERRM;
    END;
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'search: pg_trgm not available (%), name search has no typo tolerance', SQLERRM;
    END;
END
$$;

-- Two text-search configurations: sentchat_english stems (deploys, deploying -> deploy) and
-- sentchat_simple keeps every word as written (names, codes, stop words such as "it"); both
-- fold accents when unaccent is there. Changing the language: see docs/search.md.
CREATE TEXT SEARCH CONFIGURATION sentchat_english (COPY = pg_catalog.english);
CREATE TEXT SEARCH CONFIGURATION sentchat_simple (COPY = pg_catalog.simple);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'unaccent') THEN
        ALTER TEXT SEARCH CONFIGURATION sentchat_english
            ALTER MAPPING FOR hword, hword_part, word WITH unaccent, english_stem;
        ALTER TEXT SEARCH CONFIGURATION sentchat_simple
            ALTER MAPPING FOR hword, hword_part, word WITH unaccent, simple;
    END IF;
END
$$;

-- PostgreSQL's parser reads "<...>" as an HTML tag and drops the words inside
-- (`<script>alert(1)</script>` would index nothing); chat text is Markdown, not HTML, so
-- "<" becomes U+0001, a character the parser treats as a separator. The highlighter
-- (storage/search.py) does the same and the service turns it back into "<".
CREATE FUNCTION chat_search_text(body text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT replace(body, '<', U&'\0001') $$;

-- One vector holds both forms; a lexeme both configurations produce is stored once.
CREATE FUNCTION chat_search_vector(body text) RETURNS tsvector
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT to_tsvector('sentchat_english', chat_search_text(body))
                 || to_tsvector('sentchat_simple', chat_search_text(body)) $$;

-- NULL for deleted messages (never found) and for rows written before this migration that
-- the backfill has not reached yet.
ALTER TABLE chat_messages ADD COLUMN search_tsv tsvector;

CREATE FUNCTION chat_messages_search_tsv() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- An edit replaces the vector: a message is found by its current text only.
    IF NEW.deleted THEN
        NEW.search_tsv := NULL;
    ELSE
        NEW.search_tsv := chat_search_vector(NEW.text);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER chat_messages_search_tsv
    BEFORE INSERT OR UPDATE OF text, deleted ON chat_messages
    FOR EACH ROW EXECUTE FUNCTION chat_messages_search_tsv();

-- Small table: backfill and index now (milliseconds). The same statements, batched and
-- CONCURRENTLY, are storage/search.py's SEARCH_INDEXES for a big one.
DO $$
BEGIN
    IF (SELECT count(*) FROM (SELECT 1 FROM chat_messages LIMIT 100001) AS small) <= 100000 THEN
        UPDATE chat_messages SET search_tsv = chat_search_vector(text) WHERE NOT deleted;
        CREATE INDEX chat_messages_search_idx ON chat_messages USING gin (search_tsv);
        CREATE INDEX chat_messages_search_channel_idx ON chat_messages (channel_id, id);
        CREATE INDEX chat_messages_search_author_idx ON chat_messages (author_id, id);
        CREATE INDEX chat_messages_search_created_idx ON chat_messages (created_at);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        -- A few thousand rows at most: built here whatever the size of the messages.
        CREATE INDEX chat_channels_name_trgm_idx ON chat_channels USING gin (lower(name) gin_trgm_ops);
        CREATE INDEX chat_users_name_trgm_idx ON chat_users
            USING gin ((lower(id) || ' ' || lower(display_name)) gin_trgm_ops);
    END IF;
END
$$;
