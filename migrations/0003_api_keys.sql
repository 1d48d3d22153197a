-- The gateway's API keys. A key is shown once, at creation, as
-- `trk_<key_id>_<secret>`; only an argon2id hash of the secret is kept. The
-- tenant of every request made with the key comes from here, never from the
-- request body. Limits are optional (NULL: none).
CREATE TABLE api_keys (
    key_id         text        PRIMARY KEY,
    tenant         text        NOT NULL CHECK (tenant <> ''),
    secret_hash    text        NOT NULL,
    rpm            integer     CHECK (rpm > 0),
    tpm            integer     CHECK (tpm > 0),
    budget_usd_day numeric     CHECK (budget_usd_day > 0),
    -- NULL: every model; else the catalogue names this key may use.
    models         text[],
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant);
