-- Idle workers: a wake-up names the workers it is for (durably.wake_group).
--
-- A worker whose last claim came back with fewer tasks than it asked for has
-- room for more: its claim records it here with how many it asked for beyond
-- what it got (free). Waking a group takes rows out (FOR UPDATE SKIP LOCKED,
-- in the transaction that made the work due, so concurrent wake-ups pick
-- different workers) and names their workers in the notification; a claim
-- that comes back full takes its worker out. A table of its own, not columns
-- of durably.workers: the wake-up holds its row locks until the waking
-- transaction (an application's) commits, and heartbeats update
-- durably.workers; they never wait on each other this way.
create table durably.idle_workers (
  worker_id  uuid primary key references durably.workers (id) on delete cascade,
  group_name text not null,
  free       integer not null,
  since      timestamptz not null default now()
);
create index idle_workers_group on durably.idle_workers (group_name, since);

-- Workers that read the names in a wake-up: only these are recorded idle, so
-- a worker of an earlier version (woken by its group's name alone) is never
-- the one a wake-up names.
alter table durably.workers add column named_wakes boolean not null default false;
