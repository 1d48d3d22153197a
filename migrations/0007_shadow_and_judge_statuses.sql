-- triage-shadow answers a sampled share of requests again on the other
-- tier ('shadow', never sent to the client) and has a judge model grade
-- both answers ('judge', one row per graded answer). Both are priced and
-- count as spend; their baseline is booked equal to their cost, so they
-- add nothing to savings (services/shadow/README.md). Their attempts are
-- numbered from 1,000,000 (triage_protocol::shadow::ShadowAttempts) so
-- they never meet a real attempt's key.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_status_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_status_check
    CHECK (status IN ('ok', 'error', 'cancelled', 'interrupted', 'shadow', 'judge'));
