-- A schedule whose tick fails (durably.tick() isolates each schedule in a
-- subtransaction) records the error and is tried again at retry_at, with a
-- backoff; the tick itself is not skipped. Both are cleared by the next
-- successful tick.
alter table durably.schedules add column last_error jsonb;
alter table durably.schedules add column retry_at timestamptz;
