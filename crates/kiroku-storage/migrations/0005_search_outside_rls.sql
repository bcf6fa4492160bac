-- Search with its indexes usable. Under forced row-level security PostgreSQL applies the
-- tenant policy before any operator that is not leakproof, and array containment (`@>`)
-- is not: the GIN index over segments.search_terms could not be used, and a search for
-- a rare word read the tenant's segments in full (p95 about 1.1 s over 1,000 one-hour
-- meetings).
--
-- The terms (keyed hashes, see search.rs) move to a table without row-level security
-- that the service role can neither read nor write. Two SECURITY DEFINER functions,
-- running as the schema owner, are the only way in, and each applies the caller's
-- tenant (kiroku.tenant_id of its transaction, kiroku_current_tenant()) itself:
--   kiroku_index_segment(session, seq, terms) indexes one segment of the caller's tenant;
--   kiroku_search(terms, max_hits) lists the caller's tenant's segments holding every
--   term, newest meeting first.
-- Deleting a segment deletes its terms (cascade), so erasure needs nothing more.
CREATE TABLE segment_terms (
    tenant_id uuid NOT NULL,
    session_id text NOT NULL,
    result_seq bigint NOT NULL,
    meeting_id text NOT NULL,
    meeting_started_at timestamptz NOT NULL,
    start_ms bigint NOT NULL,
    terms text[] NOT NULL,
    PRIMARY KEY (tenant_id, session_id, result_seq),
    FOREIGN KEY (tenant_id, session_id, result_seq)
        REFERENCES segments (tenant_id, session_id, result_seq) ON DELETE CASCADE
);

-- Existing terms move over. The owner reads every tenant's segments: forced row-level
-- security would hide them from it, so it is lifted for this statement only, inside
-- this migration's transaction (as in 0004).
ALTER TABLE segments NO FORCE ROW LEVEL SECURITY;
ALTER TABLE segments DISABLE ROW LEVEL SECURITY;
INSERT INTO segment_terms
    SELECT tenant_id, session_id, result_seq, meeting_id, meeting_started_at, start_ms,
           search_terms
    FROM segments;
ALTER TABLE segments ENABLE ROW LEVEL SECURITY;
ALTER TABLE segments FORCE ROW LEVEL SECURITY;

DROP INDEX segments_search;
DROP INDEX segments_search_order;
ALTER TABLE segments DROP COLUMN search_terms;

-- Rare terms: the GIN index finds the few matches. Common terms: walking the tenant's
-- segments in result order finds the first hits at once. The planner picks per query
-- (kiroku_search plans each query with its terms).
CREATE INDEX segment_terms_terms ON segment_terms USING gin (terms);
CREATE INDEX segment_terms_order
    ON segment_terms (tenant_id, meeting_started_at DESC, meeting_id, start_ms);

CREATE FUNCTION kiroku_index_segment(p_session text, p_seq bigint, p_terms text[])
    RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path FROM CURRENT
    AS $$
    INSERT INTO segment_terms (tenant_id, session_id, result_seq, meeting_id,
                               meeting_started_at, start_ms, terms)
    SELECT g.tenant_id, g.session_id, g.result_seq, g.meeting_id, g.meeting_started_at,
           g.start_ms, p_terms
    FROM segments g
    WHERE g.tenant_id = kiroku_current_tenant()
      AND g.session_id = p_session AND g.result_seq = p_seq
    ON CONFLICT DO NOTHING
$$;

-- Dynamic SQL on purpose: the query is planned with its terms, so the planner can tell
-- a rare term (GIN index, then sort the few matches) from a common one (walk in result
-- order, stop after max_hits). A generic plan would have to guess. ROWS tells the
-- caller's planner that few rows come back (the sealed segments are then fetched by key).
CREATE FUNCTION kiroku_search(p_terms text[], p_max_hits integer)
    RETURNS TABLE (session_id text, result_seq bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER ROWS 20
    SET search_path FROM CURRENT
    AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT t.session_id, t.result_seq FROM segment_terms t
         WHERE t.tenant_id = kiroku_current_tenant() AND t.terms @> $1
         ORDER BY t.meeting_started_at DESC, t.meeting_id, t.start_ms
         LIMIT $2'
        USING p_terms, p_max_hits;
END
$$;

DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON FUNCTION %I.kiroku_index_segment(text, bigint, text[]) FROM PUBLIC',
                   current_schema());
    EXECUTE format('REVOKE ALL ON FUNCTION %I.kiroku_search(text[], integer) FROM PUBLIC',
                   current_schema());
    EXECUTE format('GRANT EXECUTE ON FUNCTION %I.kiroku_index_segment(text, bigint, text[]) TO kiroku_storage',
                   current_schema());
    EXECUTE format('GRANT EXECUTE ON FUNCTION %I.kiroku_search(text[], integer) TO kiroku_storage',
                   current_schema());
END $$;
