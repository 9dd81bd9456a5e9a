-- Schedules: crash-safe cron and fixed-delay recurrences (the functions,
-- tick() among them, are in sql/schedules.sql).

create table durably.schedules (
  id                text primary key,
  cron              text,
  every_ms          bigint,
  timezone          text not null default 'UTC',
  func              text not null,
  args              jsonb not null default '[]',
  group_name        text not null default 'default',
  id_template       text not null default '{schedule}.{timestamp}',
  timeout_ms        bigint not null default 86400000,
  overlap           text not null default 'always_start',
  catchup           text not null default 'all',
  catchup_window_ms bigint,
  paused            boolean not null default false,
  next_run_at       timestamptz,
  last_run_at       timestamptz,
  last_promise_id   text,
  occurrence        bigint not null default 0,
  created_at        timestamptz not null default now(),
  updated_at        timestamptz not null default now(),
  constraint schedules_recurrence check ((cron is null) <> (every_ms is null)),
  constraint schedules_every check (every_ms is null or every_ms >= 1),
  constraint schedules_overlap check (overlap in ('always_start', 'skip_if_running', 'cancel_and_restart', 'buffer_one')),
  constraint schedules_catchup check (catchup in ('all', 'latest', 'none'))
);

create index schedules_due on durably.schedules (next_run_at) where not paused;
