-- A judge grades both answers of a shadowed request: the one the client
-- got and the other tier's shadow answer. Training needs both (was tier 1
-- good? was tier 2?), but outcomes held one row per (tenant, request,
-- source). `judged` says which answer a row grades; feedback and gold
-- rows grade the client's answer ('answer', the default), so their
-- one-row-per-source rule is unchanged.
ALTER TABLE outcomes ADD COLUMN judged text NOT NULL DEFAULT 'answer'
    CHECK (judged IN ('answer', 'shadow'));
ALTER TABLE outcomes DROP CONSTRAINT outcomes_pkey;
ALTER TABLE outcomes ADD PRIMARY KEY (tenant_key, request_id, source, judged);
