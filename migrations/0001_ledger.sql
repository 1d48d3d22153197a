-- Triage cost ledger.
--
-- ledger_entries holds one row per generation attempt, keyed by
-- (request_id, attempt) so a redelivered usage event can never be booked
-- twice. Cost is computed by the writer (exact decimals) from the price in
-- force at the event's finished_at and stored on the row: a later price
-- change never rewrites booked history.
--
-- Three rollups are maintained in the same transaction as the insert, from
-- the rows actually inserted (never from duplicates):
--   usage_minute  (minute, tier, status)                  recent windows
--   usage_daily   (day, tier, model, tenant, status)       reports
--   usage_totals  (tier, model, tenant, status)           all-time counters
-- Reports and the exporter read only the rollups, so their cost does not
-- grow with the number of ledger rows (see services/ledger/README.md for
-- the 10-million-row benchmark).

-- Prices per 1K tokens. A row applies from effective_from until the next
-- row for the same (tier, model); model NULL means every model of the tier,
-- and a model-specific row wins over it.
CREATE TABLE prices (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tier           smallint    NOT NULL CHECK (tier IN (1, 2)),
    model          text        CHECK (model <> ''),
    input_per_1k   numeric     NOT NULL CHECK (input_per_1k >= 0),
    output_per_1k  numeric     NOT NULL CHECK (output_per_1k >= 0),
    effective_from timestamptz NOT NULL,
    source         text        NOT NULL DEFAULT 'manual',
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT prices_one_line_per_start UNIQUE NULLS NOT DISTINCT (tier, model, effective_from)
);

COMMENT ON TABLE prices IS
    'USD per 1K tokens, effective-dated. Append-only: rows in force cannot be changed or deleted; add a row with a later effective_from instead.';

-- Price history is evidence: a price that has been in force may not change.
-- A price scheduled for the future may still be deleted (a typo caught in time).
CREATE FUNCTION prices_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'prices are append-only: add a new row with a later effective_from instead of updating price %', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.effective_from <= now() THEN
        RAISE EXCEPTION 'price % has been in force since %; it cannot be deleted', OLD.id, OLD.effective_from
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER prices_append_only
    BEFORE UPDATE OR DELETE ON prices
    FOR EACH ROW EXECUTE FUNCTION prices_append_only();

CREATE TABLE ledger_entries (
    request_id        text             NOT NULL,
    attempt           integer          NOT NULL CHECK (attempt >= 1),
    tenant            text,
    tier              smallint         NOT NULL CHECK (tier IN (1, 2)),
    model             text             NOT NULL,
    status            text             NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
    error_code        text,
    prompt_tokens     integer          NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens integer          NOT NULL CHECK (completion_tokens >= 0),
    tokens_estimated  boolean          NOT NULL,
    input_cost        numeric          NOT NULL,
    output_cost       numeric          NOT NULL,
    cost              numeric          NOT NULL,
    -- The same tokens at tier-2 prices: what this attempt would have cost
    -- without routing. Equal to cost for tier-2 attempts.
    baseline_cost     numeric          NOT NULL,
    price_id          bigint           NOT NULL,
    baseline_price_id bigint           NOT NULL,
    score             double precision,
    reasons           text[]           NOT NULL DEFAULT '{}',
    ttft_ms           double precision,
    total_ms          double precision NOT NULL,
    finished_at       timestamptz      NOT NULL,
    booked_at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, attempt)
);

COMMENT ON TABLE ledger_entries IS
    'One row per generation attempt, booked exactly once from llm.usage. Costs in USD, exact.';

-- Rows arrive roughly in finished_at order, so a BRIN index gives cheap
-- time-range scans for ad-hoc queries at a tiny fraction of a btree''s size
-- and insert cost. price_id/baseline_price_id are deliberately not foreign
-- keys: per-row RI checks cost ingest throughput, and prices in force
-- cannot be deleted (trigger above).
CREATE INDEX ledger_entries_finished_at_brin ON ledger_entries USING brin (finished_at);

-- fillfactor leaves room on each page so the frequent upserts of the same
-- rollup rows can be HOT updates (no index churn, less bloat).
CREATE TABLE usage_minute (
    minute            timestamptz      NOT NULL,
    tier              smallint         NOT NULL,
    status            text             NOT NULL,
    requests          bigint           NOT NULL,
    prompt_tokens     bigint           NOT NULL,
    completion_tokens bigint           NOT NULL,
    cost              numeric          NOT NULL,
    baseline_cost     numeric          NOT NULL,
    ttft_ms_sum       double precision NOT NULL,
    ttft_count        bigint           NOT NULL,
    total_ms_sum      double precision NOT NULL,
    PRIMARY KEY (minute, tier, status)
) WITH (fillfactor = 50);

-- tenant '' means "no tenant" (a primary key column cannot be NULL); the
-- views turn it back into NULL.
CREATE TABLE usage_daily (
    day                date             NOT NULL,
    tier               smallint         NOT NULL,
    model              text             NOT NULL,
    tenant             text             NOT NULL,
    status             text             NOT NULL,
    requests           bigint           NOT NULL,
    estimated_requests bigint           NOT NULL,
    prompt_tokens      bigint           NOT NULL,
    completion_tokens  bigint           NOT NULL,
    cost               numeric          NOT NULL,
    baseline_cost      numeric          NOT NULL,
    ttft_ms_sum        double precision NOT NULL,
    ttft_count         bigint           NOT NULL,
    total_ms_sum       double precision NOT NULL,
    PRIMARY KEY (day, tier, model, tenant, status)
) WITH (fillfactor = 50);

CREATE TABLE usage_totals (
    tier              smallint NOT NULL,
    model             text     NOT NULL,
    tenant            text     NOT NULL,
    status            text     NOT NULL,
    requests          bigint   NOT NULL,
    prompt_tokens     bigint   NOT NULL,
    completion_tokens bigint   NOT NULL,
    cost              numeric  NOT NULL,
    baseline_cost     numeric  NOT NULL,
    PRIMARY KEY (tier, model, tenant, status)
) WITH (fillfactor = 50);

-- Views: the SQL behind `triage-ledger report`, usable from psql.

-- Every ledger row with derived columns.
CREATE VIEW ledger_requests AS
SELECT request_id, attempt, tenant, tier, model, status, error_code,
       prompt_tokens, completion_tokens,
       prompt_tokens + completion_tokens AS total_tokens,
       tokens_estimated, input_cost, output_cost, cost, baseline_cost,
       baseline_cost - cost AS savings,
       price_id, baseline_price_id, score, reasons, ttft_ms, total_ms,
       finished_at, (finished_at AT TIME ZONE 'UTC')::date AS day, booked_at
FROM ledger_entries;

-- One row per UTC day, tier, model, tenant and status: the finest grain of
-- the reports. Aggregate it with GROUP BY for any coarser report.
CREATE VIEW ledger_daily AS
SELECT day, tier, model, NULLIF(tenant, '') AS tenant, status,
       requests, estimated_requests, prompt_tokens, completion_tokens,
       prompt_tokens + completion_tokens AS total_tokens,
       cost, baseline_cost, baseline_cost - cost AS savings,
       ttft_ms_sum, ttft_count, total_ms_sum
FROM usage_daily;

-- The 30-day by-day-by-tier report:
--   SELECT * FROM ledger_daily_by_tier WHERE day >= current_date - 30;
CREATE VIEW ledger_daily_by_tier AS
SELECT day, tier,
       sum(requests)::bigint AS requests,
       sum(prompt_tokens)::bigint AS prompt_tokens,
       sum(completion_tokens)::bigint AS completion_tokens,
       sum(prompt_tokens + completion_tokens)::bigint AS total_tokens,
       sum(cost) AS cost,
       sum(baseline_cost) AS baseline_cost,
       sum(baseline_cost - cost) AS savings,
       sum(ttft_ms_sum) / NULLIF(sum(ttft_count), 0) AS avg_ttft_ms,
       sum(total_ms_sum) / NULLIF(sum(requests), 0) AS avg_total_ms
FROM usage_daily
GROUP BY day, tier;

-- Per day: requests, cost, savings and the share of requests on tier 2.
CREATE VIEW ledger_daily_summary AS
SELECT day,
       sum(requests)::bigint AS requests,
       sum(requests) FILTER (WHERE tier = 2)::bigint AS tier2_requests,
       round(sum(requests) FILTER (WHERE tier = 2)::numeric / NULLIF(sum(requests), 0), 4) AS tier2_share,
       sum(prompt_tokens + completion_tokens)::bigint AS total_tokens,
       sum(cost) AS cost,
       sum(baseline_cost) AS baseline_cost,
       sum(baseline_cost - cost) AS savings,
       round(sum(baseline_cost - cost) / NULLIF(sum(baseline_cost), 0), 4) AS savings_share
FROM usage_daily
GROUP BY day;

-- The price of each (tier, model) line in force now.
CREATE VIEW prices_in_force AS
SELECT DISTINCT ON (tier, model) id, tier, model, input_per_1k, output_per_1k, effective_from, source
FROM prices
WHERE effective_from <= now()
ORDER BY tier, model, effective_from DESC;

-- Audit: rows where the daily rollup disagrees with the ledger rows. Empty
-- when the books balance. Scans the whole ledger: run it off-peak.
CREATE VIEW ledger_reconciliation AS
WITH raw AS (
    SELECT (finished_at AT TIME ZONE 'UTC')::date AS day, tier, model,
           COALESCE(tenant, '') AS tenant, status,
           count(*) AS requests,
           sum(prompt_tokens) AS prompt_tokens,
           sum(completion_tokens) AS completion_tokens,
           sum(cost) AS cost,
           sum(baseline_cost) AS baseline_cost
    FROM ledger_entries
    GROUP BY 1, 2, 3, 4, 5
)
SELECT COALESCE(r.day, d.day) AS day,
       COALESCE(r.tier, d.tier) AS tier,
       COALESCE(r.model, d.model) AS model,
       NULLIF(COALESCE(r.tenant, d.tenant), '') AS tenant,
       COALESCE(r.status, d.status) AS status,
       r.requests AS ledger_requests, d.requests AS rollup_requests,
       r.cost AS ledger_cost, d.cost AS rollup_cost
FROM raw r
FULL JOIN usage_daily d
  ON (r.day, r.tier, r.model, r.tenant, r.status) = (d.day, d.tier, d.model, d.tenant, d.status)
WHERE r.requests IS DISTINCT FROM d.requests
   OR r.prompt_tokens IS DISTINCT FROM d.prompt_tokens
   OR r.completion_tokens IS DISTINCT FROM d.completion_tokens
   OR r.cost IS DISTINCT FROM d.cost
   OR r.baseline_cost IS DISTINCT FROM d.baseline_cost;

-- Rebuilds the three rollups from ledger_entries (after a bulk load or a
-- manual correction). Blocks the writer for its duration.
CREATE FUNCTION ledger_rebuild_rollups() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE ledger_entries IN SHARE MODE;
    LOCK TABLE usage_minute, usage_daily, usage_totals IN ACCESS EXCLUSIVE MODE;
    TRUNCATE usage_minute, usage_daily, usage_totals;

    INSERT INTO usage_minute
    SELECT date_trunc('minute', finished_at, 'UTC'), tier, status,
           count(*), sum(prompt_tokens), sum(completion_tokens),
           sum(cost), sum(baseline_cost),
           COALESCE(sum(ttft_ms), 0), count(ttft_ms), sum(total_ms)
    FROM ledger_entries
    GROUP BY 1, 2, 3;

    INSERT INTO usage_daily
    SELECT (finished_at AT TIME ZONE 'UTC')::date, tier, model, COALESCE(tenant, ''), status,
           count(*), count(*) FILTER (WHERE tokens_estimated),
           sum(prompt_tokens), sum(completion_tokens),
           sum(cost), sum(baseline_cost),
           COALESCE(sum(ttft_ms), 0), count(ttft_ms), sum(total_ms)
    FROM ledger_entries
    GROUP BY 1, 2, 3, 4, 5;

    INSERT INTO usage_totals
    SELECT tier, model, tenant, status,
           sum(requests), sum(prompt_tokens), sum(completion_tokens),
           sum(cost), sum(baseline_cost)
    FROM usage_daily
    GROUP BY 1, 2, 3, 4;
END;
$$;
