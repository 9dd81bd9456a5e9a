-- durably engine: durable promises and leased tasks.
--
-- A promise is a row with a caller-chosen id that settles exactly once:
--   pending -> resolved | rejected | rejected_canceled | rejected_timedout
-- Creating a promise whose id exists returns the existing row (dedup by id).
--
-- A task is the dispatch of a function invocation: "some worker of group G must
-- (re)run the function of promise P". One task per promise at most; it lives
-- only while the promise is pending and is deleted when the promise settles.
--   ready     available_at = when it may run
--   claimed   available_at = lease expiry (renewed by heartbeats); worker_id set
--   suspended available_at = timer wake-up, or 'infinity' while it waits on
--             other promises (see callbacks)
-- Every state uses available_at the same way, so one index answers "what can be
-- claimed now": due ready tasks, expired leases and due timers alike.
--
-- Lock order: promises before tasks, rows of one table in id order. Every
-- procedure that touches both (settle, suspend, cancel) follows it.
--
-- Errors raised here use SQLSTATE class DU:
--   DU001 invalid id, DU002 invalid argument, DU003 not found.

create table durably.promises (
  id          text primary key,
  state       text not null default 'pending',
  kind        text not null default 'invoke',
  func        text,
  args        jsonb,
  value       jsonb,
  timeout_at  timestamptz not null,
  tags        jsonb not null default '{}',
  parent_id   text,
  root_id     text not null,
  created_at  timestamptz not null default now(),
  settled_at  timestamptz,
  constraint promises_state check (state in ('pending', 'resolved', 'rejected', 'rejected_canceled', 'rejected_timedout')),
  -- invoke: a function run by a task; step: a ctx.run checkpoint; sleep: a
  -- durable timer (resolves at timeout_at); external: settled from outside.
  constraint promises_kind check (kind in ('invoke', 'step', 'sleep', 'external')),
  constraint promises_settled_at check ((state = 'pending') = (settled_at is null))
) with (fillfactor = 90);

create index promises_parent on durably.promises (parent_id) where parent_id is not null;
create index promises_pending_timeout on durably.promises (timeout_at) where state = 'pending';

-- No foreign key to promises: the procedures below are the only writers, and
-- a key check would cost an index probe on every enqueue.
create table durably.tasks (
  promise_id   text primary key,
  group_name   text not null,
  state        text not null default 'ready',
  available_at timestamptz not null default now(),
  attempt      integer not null default 1,
  worker_id    uuid,
  claimed_at   timestamptz,
  -- the execution has history (steps) to replay: claims load it in one go
  replay       boolean not null default false,
  retry        jsonb,
  last_error   jsonb,
  created_at   timestamptz not null default now(),
  constraint tasks_state check (state in ('ready', 'claimed', 'suspended')),
  constraint tasks_claimed_by check ((state = 'claimed') = (worker_id is not null))
) with (fillfactor = 80);

create index tasks_claim on durably.tasks (group_name, available_at);
create index tasks_worker on durably.tasks (worker_id) where worker_id is not null;

-- A suspended task waits on these promises; settling one wakes the task.
-- Rows are removed when their promise settles, so stale ones clean themselves.
create table durably.callbacks (
  promise_id text not null,
  task_id    text not null,
  primary key (promise_id, task_id)
);

create table durably.workers (
  id           uuid primary key,
  group_name   text not null,
  host         text not null,
  pid          integer not null,
  functions    text[] not null default '{}',
  lease_ms     integer not null,
  started_at   timestamptz not null default now(),
  heartbeat_at timestamptz not null default now(),
  stopped_at   timestamptz
);
