-- Request ids are scoped by tenant (schemas/README.md, "Request ids"): two
-- tenants may use the same id, and each one's attempts must be booked. The
-- primary key, which makes booking idempotent, therefore includes the
-- tenant; '' stands for "no tenant" (a key column cannot be NULL), as in the
-- rollups.
ALTER TABLE ledger_entries
    ADD COLUMN tenant_key text GENERATED ALWAYS AS (COALESCE(tenant, '')) STORED;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey;
ALTER TABLE ledger_entries ADD PRIMARY KEY (tenant_key, request_id, attempt);
