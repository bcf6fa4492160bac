-- The minutes. The service connects as `kiroku_storage` (no ownership, no BYPASSRLS);
-- every table is tenant-scoped with row-level security ENABLED and FORCED, and a
-- transaction sees only the tenant it set (kiroku.tenant_id, SET LOCAL).
-- Transcript text and label texts are stored sealed with the tenant's data key
-- (AES-256-GCM, see crypto.rs); the search index holds keyed hashes of terms only.

CREATE FUNCTION kiroku_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('kiroku.tenant_id', true), '')::uuid $$;

-- The tenant's data key, wrapped by the master key (key_id names which).
CREATE TABLE data_keys (
    tenant_id uuid PRIMARY KEY,
    key_id text NOT NULL,
    wrapped bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE meetings (
    tenant_id uuid NOT NULL,
    meeting_id text NOT NULL,
    title text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    language text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, meeting_id)
);
CREATE INDEX meetings_started ON meetings (tenant_id, started_at DESC);

-- A meeting's streams, in the order they began (segment times are per session).
CREATE TABLE sessions (
    tenant_id uuid NOT NULL,
    session_id text NOT NULL,
    meeting_id text NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    closed_at timestamptz,
    PRIMARY KEY (tenant_id, session_id),
    FOREIGN KEY (tenant_id, meeting_id) REFERENCES meetings (tenant_id, meeting_id)
);

-- One row per final: (session, result_seq) is the final's identity, so a redelivered or
-- re-published final is stored once.
CREATE TABLE segments (
    tenant_id uuid NOT NULL,
    session_id text NOT NULL,
    result_seq bigint NOT NULL,
    meeting_id text NOT NULL,
    start_ms bigint NOT NULL,
    end_ms bigint NOT NULL,
    -- sealed kiroku.transcribe.v1.Segment (text, words, confidence)
    sealed bytea NOT NULL,
    search_terms text[] NOT NULL,
    PRIMARY KEY (tenant_id, session_id, result_seq),
    FOREIGN KEY (tenant_id, session_id) REFERENCES sessions (tenant_id, session_id)
);
CREATE INDEX segments_meeting ON segments (tenant_id, meeting_id);
CREATE INDEX segments_search ON segments USING gin (search_terms);

-- Tags (meeting), bookmarks (a time), memos (a time range); the text sealed, tags also
-- findable by a keyed hash of their text.
CREATE TABLE labels (
    tenant_id uuid NOT NULL,
    label_id uuid NOT NULL,
    meeting_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('tag', 'bookmark', 'memo')),
    sealed_text bytea NOT NULL,
    tag_term text,
    at_ms bigint NOT NULL DEFAULT 0,
    end_ms bigint NOT NULL DEFAULT 0,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, label_id),
    FOREIGN KEY (tenant_id, meeting_id) REFERENCES meetings (tenant_id, meeting_id)
);
CREATE INDEX labels_meeting ON labels (tenant_id, meeting_id);
CREATE INDEX labels_tag ON labels (tenant_id, tag_term) WHERE tag_term IS NOT NULL;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['data_keys', 'meetings', 'sessions', 'segments', 'labels'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = kiroku_current_tenant())'
                       ' WITH CHECK (tenant_id = kiroku_current_tenant())', t);
    END LOOP;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO kiroku_storage', current_schema());
    EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO kiroku_storage', current_schema());
END $$;

GRANT SELECT, INSERT, UPDATE, DELETE ON meetings, sessions, segments, labels TO kiroku_storage;
GRANT SELECT, INSERT ON data_keys TO kiroku_storage;
