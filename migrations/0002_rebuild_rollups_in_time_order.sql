-- ledger_rebuild_rollups() wrote the rollups in hash order. The writer
-- appends them in time order, so a time-range read (the exporter's recent
-- windows) touches a few pages; a rebuilt rollup scattered the same rows over
-- thousands. Rebuild in time order, as the writer would have written them.
CREATE OR REPLACE FUNCTION ledger_rebuild_rollups() RETURNS void
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
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3;

    INSERT INTO usage_daily
    SELECT (finished_at AT TIME ZONE 'UTC')::date, tier, model, COALESCE(tenant, ''), status,
           count(*), count(*) FILTER (WHERE tokens_estimated),
           sum(prompt_tokens), sum(completion_tokens),
           sum(cost), sum(baseline_cost),
           COALESCE(sum(ttft_ms), 0), count(ttft_ms), sum(total_ms)
    FROM ledger_entries
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5;

    INSERT INTO usage_totals
    SELECT tier, model, tenant, status,
           sum(requests), sum(prompt_tokens), sum(completion_tokens),
           sum(cost), sum(baseline_cost)
    FROM usage_daily
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4;
END;
$$;
