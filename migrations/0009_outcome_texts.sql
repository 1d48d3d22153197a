-- Prompt (the request's messages) and answer text of judged outcomes, for
-- training a deployment's own router head (`triage-router train
-- --from-db`). Written only when
-- the shadow service runs with `learning.store_text = true` (its judge
-- events then carry the texts); off by default, so this table stays empty.
-- One row per (tenant, request, judged answer), beside the outcome it
-- belongs to; the ledger's purge job deletes rows older than
-- `learning.text_retention` (and clears feedback comments of that age).
CREATE TABLE outcome_texts (
    tenant_key   text        NOT NULL,
    request_id   text        NOT NULL,
    judged       text        NOT NULL CHECK (judged IN ('answer', 'shadow')),
    -- The conversation as the client sent it: [{role, content}, ...].
    messages     jsonb       NOT NULL,
    answer       text        NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_key, request_id, judged)
);

CREATE INDEX outcome_texts_by_time ON outcome_texts (recorded_at);

COMMENT ON TABLE outcome_texts IS
    'Prompt and answer text of judged outcomes (only with learning.store_text); purged after learning.text_retention.';
