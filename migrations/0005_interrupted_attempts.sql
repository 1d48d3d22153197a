-- A worker that dies mid-stream leaves a progress record; the next delivery
-- of the request books that attempt as 'interrupted' with the recorded
-- tokens (services/worker/README.md, "Failure behaviour"). Like every
-- other status it is priced and counts as spend.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_status_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_status_check
    CHECK (status IN ('ok', 'error', 'cancelled', 'interrupted'));
