-- Lease expirations per group, counted where they are found (a claim of an
-- expired task, durably.lease_expired) whatever becomes of the task: run
-- again at once, retried later, or rejected after the last attempt. The
-- process whose lease expired has usually died, so only the database can
-- count them all (durably_lease_expirations_total, durably.metric_samples).
create table durably.lease_expirations (
  group_name text primary key,
  total      bigint not null
);
