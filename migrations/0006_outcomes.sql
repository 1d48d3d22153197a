-- Outcomes: what became of an answered request, from a source that judged
-- it — the client's own feedback (llm.feedback, POST /v1/feedback), a gold
-- answer, or a judge model grading shadow answers. Keyed like the ledger
-- by (tenant, request id) with '' for "no tenant", one row per source: a
-- second rating from the same source replaces the first. Training reads
-- these rows; prompt and answer text are never stored here unless a
-- deployment turns text storage on (columns stay NULL otherwise).
CREATE TABLE outcomes (
    tenant_key   text             NOT NULL,
    tenant       text,
    request_id   text             NOT NULL,
    source       text             NOT NULL CHECK (source IN ('gold', 'feedback', 'judge')),
    good         boolean          NOT NULL,
    -- 0-10 where the source gave a score (good at 7 or more).
    score        double precision CHECK (score IS NULL OR (score >= 0 AND score <= 10)),
    -- The attempt that answered, as booked in ledger_entries.
    tier         smallint         CHECK (tier IN (1, 2)),
    model        text,
    attempt      integer,
    comment      text,
    recorded_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_key, request_id, source),
    CHECK (tenant_key = COALESCE(tenant, ''))
);

CREATE INDEX outcomes_by_time ON outcomes (recorded_at);

COMMENT ON TABLE outcomes IS
    'Judged outcomes of answered requests (feedback, gold, judge); one row per (tenant, request, source).';
