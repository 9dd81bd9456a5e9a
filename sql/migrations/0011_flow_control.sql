-- Flow control: per-key concurrency and rate limits, priorities (sql/limits.sql).
--
-- An invocation may carry a concurrency key and a priority; both are copied
-- to its task, where claims read them. Adding a nullable column and a column
-- with a constant default rewrites no rows.
alter table durably.tasks add column concurrency_key text;
alter table durably.tasks add column priority integer not null default 0;
-- A ready task that a full concurrency limit holds back waits with
-- available_at 'infinity' and the key it waits on; a freed slot of that key
-- makes the first of them due again (durably.wake_parked).
alter table durably.tasks add column parked_on text;

-- Claims order prioritized tasks without sorting the backlog: only tasks of
-- a priority other than 0 are in this index, so with none it is empty and
-- one probe of it tells a claim that plain order applies.
create index tasks_priority on durably.tasks (group_name, priority desc, available_at) where priority <> 0;
create index tasks_key on durably.tasks (concurrency_key, available_at) where concurrency_key is not null;
create index tasks_parked on durably.tasks (parked_on, priority desc, promise_seq) where parked_on is not null;

-- The limits in force, by key: a concurrency key, function:<name> or
-- group:<name>. With no row here claims take the plain path.
create table durably.limits (
  key            text primary key,
  concurrency    integer,
  rate_limit     integer,
  rate_period_ms integer,
  updated_at     timestamptz not null default now(),
  constraint limits_key check (key <> '' and length(key) <= 512),
  constraint limits_concurrency check (concurrency >= 0),
  constraint limits_rate check ((rate_limit is null) = (rate_period_ms is null) and rate_limit >= 0 and rate_period_ms > 0)
);

-- When executions of a rate-limited key started, for the sliding window;
-- rows older than the key's period are deleted by the claims that read them.
create table durably.limit_starts (
  key        text not null,
  started_at timestamptz not null
);
create index limit_starts_key on durably.limit_starts (key, started_at);
