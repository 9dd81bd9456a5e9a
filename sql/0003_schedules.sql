-- durably schedules: crash-safe cron and fixed-delay recurrences.
--
-- A schedule is a row: a cron expression in an IANA zone (or a fixed delay),
-- the function, args and group each tick invokes, and the policies below.
-- durably.tick() creates every due tick as a promise + task in one
-- transaction and advances the schedule. Any number of tickers may call it at
-- once: schedules are claimed FOR UPDATE SKIP LOCKED, and a tick's promise id
-- is derived from the schedule id and the tick time ({schedule}.{timestamp} by
-- default), so even two tickers that raced past the lock could only dedup
-- into one promise.
--
-- Catch-up after downtime (ticks due while no ticker ran):
--   all     every missed tick is created, in order, with its original time
--   latest  only the newest missed tick
--   none    none; ticks later than catchup_window_ms (default 1 s for none)
--           are skipped and the schedule goes on from now
-- catchup_window_ms bounds `all` and `latest` too when set: older ticks are
-- skipped.
--
-- Overlap, judged against the previous tick's promise:
--   always_start        every tick starts, overlapping or not
--   skip_if_running     a tick due while the previous one is pending is skipped
--   cancel_and_restart  the previous one is canceled (its ctx.signal fires) and
--                       the new one starts
--   buffer_one          the new one waits (a suspended task with a callback on
--                       the previous promise) and starts when it settles; at
--                       most one waits, later ticks are skipped meanwhile
--
-- Each tick's promise is tagged durably:schedule and durably:tick (the tick
-- time, ISO-8601 UTC) so runs are auditable by schedule. Errors: DU002 invalid
-- argument, DU003 not found, DU004 a schedule with this id and another
-- definition exists.

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

-- The first run of a recurrence strictly after p_after.
create function durably.schedule_next(p_cron text, p_every_ms bigint, p_tz text, p_after timestamptz)
returns timestamptz
language sql stable as $$
  select case when p_cron is not null then durably.cron_next(p_cron, p_after, p_tz)
              else p_after + p_every_ms * interval '1 millisecond' end
$$;

-- The newest run at or before p_upto of a recurrence whose run p_from is due
-- (p_from <= p_upto), without stepping through every run in between: fixed
-- delays by arithmetic; cron by looking back 1 s, 2 s, 4 s ... from p_upto
-- for a run, then bisecting. Used by catch-up latest and none.
create function durably.schedule_latest(p_cron text, p_every_ms bigint, p_tz text, p_from timestamptz, p_upto timestamptz)
returns timestamptz
language plpgsql stable as $$
declare
  v_span interval := interval '1 second';
  v_lo   timestamptz;
  v_hi   timestamptz := p_upto;
  v_mid  timestamptz;
  v_t    timestamptz;
begin
  if p_from > p_upto then
    return p_from;
  end if;
  if p_cron is null then
    return p_from + floor(extract(epoch from p_upto - p_from) * 1000 / p_every_ms) * p_every_ms * interval '1 millisecond';
  end if;
  -- cron_next(x) <= p_upto exactly when x is before the newest run: find
  -- such an x (v_lo) and one that is not (v_hi), then bisect to a
  -- millisecond; runs are whole seconds apart, so the first run after v_lo
  -- is then the newest.
  loop
    v_lo := p_upto - v_span;
    if v_lo <= p_from then
      v_lo := p_from - interval '1 microsecond';
      exit;
    end if;
    v_t := durably.cron_next(p_cron, v_lo, p_tz);
    exit when v_t is not null and v_t <= p_upto;
    v_hi := v_lo;
    v_span := v_span * 2;
  end loop;
  while v_hi - v_lo > interval '1 millisecond' loop
    v_mid := v_lo + (v_hi - v_lo) / 2;
    v_t := durably.cron_next(p_cron, v_mid, p_tz);
    if v_t is not null and v_t <= p_upto then v_lo := v_mid; else v_hi := v_mid; end if;
  end loop;
  v_t := durably.cron_next(p_cron, v_lo, p_tz);
  return case when v_t is not null and v_t <= p_upto then v_t else p_from end;
end $$;

-- A tick's promise id from the schedule's template.
create function durably.schedule_promise_id(p_template text, p_schedule text, p_tick timestamptz, p_occurrence bigint)
returns text
language sql immutable as $$
  select replace(replace(replace(p_template,
           '{schedule}', p_schedule),
           '{timestamp}', to_char(p_tick at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')),
           '{occurrence}', p_occurrence::text)
$$;

-- Creates a schedule. The same id with the same definition returns the
-- existing row unchanged (re-running a setup script is a no-op); another
-- definition raises DU004 unless p_replace.
-- p_opts: every_ms (instead of p_cron), timezone, args, group, id_template,
-- timeout_ms, overlap, catchup, catchup_window_ms.
create function durably.create_schedule(
  p_id text, p_cron text, p_func text, p_opts jsonb default '{}', p_replace boolean default false
) returns setof durably.schedules
language plpgsql as $$
declare
  v_new      durably.schedules;
  v_existing durably.schedules;
begin
  perform durably.check_ids(array[p_id]);
  v_new.id := p_id;
  v_new.cron := p_cron;
  v_new.every_ms := (p_opts->>'every_ms')::bigint;
  v_new.timezone := coalesce(p_opts->>'timezone', 'UTC');
  v_new.func := p_func;
  v_new.args := coalesce(p_opts->'args', '[]');
  v_new.group_name := coalesce(p_opts->>'group', 'default');
  v_new.id_template := coalesce(p_opts->>'id_template', '{schedule}.{timestamp}');
  v_new.timeout_ms := coalesce((p_opts->>'timeout_ms')::bigint, 86400000);
  v_new.overlap := coalesce(p_opts->>'overlap', 'always_start');
  v_new.catchup := coalesce(p_opts->>'catchup', 'all');
  v_new.catchup_window_ms := (p_opts->>'catchup_window_ms')::bigint;

  if (p_cron is null) = (v_new.every_ms is null) then
    raise exception using errcode = 'DU002', message = 'a schedule needs a cron expression or every_ms, not both';
  end if;
  if p_cron is not null then
    perform durably.cron_validate(p_cron, v_new.timezone);
  elsif v_new.every_ms < 1 then
    raise exception using errcode = 'DU002', message = format('invalid every_ms %s: at least 1', v_new.every_ms);
  end if;
  if p_func is null or p_func = '' or length(p_func) > 255 then
    raise exception using errcode = 'DU002', message = 'function names are 1 to 255 characters';
  end if;
  if jsonb_typeof(v_new.args) <> 'array' then
    raise exception using errcode = 'DU002', message = 'args must be a JSON array';
  end if;
  if v_new.group_name = '' or length(v_new.group_name) > 128 then
    raise exception using errcode = 'DU002', message = format('invalid group %L: 1 to 128 characters', v_new.group_name);
  end if;
  if v_new.id_template not like '%{timestamp}%' and v_new.id_template not like '%{occurrence}%' then
    raise exception using errcode = 'DU002',
      message = format('invalid id template %L: it needs {timestamp} or {occurrence} so that each tick gets its own id', v_new.id_template);
  end if;
  if v_new.overlap not in ('always_start', 'skip_if_running', 'cancel_and_restart', 'buffer_one') then
    raise exception using errcode = 'DU002',
      message = format('invalid overlap policy %L: always_start, skip_if_running, cancel_and_restart or buffer_one', v_new.overlap);
  end if;
  if v_new.catchup not in ('all', 'latest', 'none') then
    raise exception using errcode = 'DU002', message = format('invalid catch-up policy %L: all, latest or none', v_new.catchup);
  end if;
  if v_new.timeout_ms < 1 or v_new.catchup_window_ms < 0 then
    raise exception using errcode = 'DU002', message = 'timeout_ms must be positive and catchup_window_ms not negative';
  end if;

  v_new.next_run_at := durably.schedule_next(v_new.cron, v_new.every_ms, v_new.timezone, now());
  v_new.paused := false;
  v_new.occurrence := 0;
  v_new.created_at := now();
  v_new.updated_at := now();
  -- Insert, or else judge the row that exists. A concurrent creator makes the
  -- insert wait and then do nothing; a new statement sees its committed row.
  insert into durably.schedules select v_new.* on conflict (id) do nothing;
  if found then
    perform pg_notify('durably_schedules', p_id);
    return next v_new;
    return;
  end if;

  select * into v_existing from durably.schedules s where s.id = p_id for update;
  if (v_existing.cron, v_existing.every_ms, v_existing.timezone, v_existing.func, v_existing.args,
      v_existing.group_name, v_existing.id_template, v_existing.timeout_ms, v_existing.overlap,
      v_existing.catchup, v_existing.catchup_window_ms)
     is not distinct from
     (v_new.cron, v_new.every_ms, v_new.timezone, v_new.func, v_new.args, v_new.group_name,
      v_new.id_template, v_new.timeout_ms, v_new.overlap, v_new.catchup, v_new.catchup_window_ms) then
    return next v_existing;
    return;
  end if;
  if not p_replace then
    raise exception using errcode = 'DU004',
      message = format('schedule %L already exists with another definition (pass replace to change it)', p_id);
  end if;
  return query
  update durably.schedules s
     set cron = v_new.cron, every_ms = v_new.every_ms, timezone = v_new.timezone, func = v_new.func,
         args = v_new.args, group_name = v_new.group_name, id_template = v_new.id_template,
         timeout_ms = v_new.timeout_ms, overlap = v_new.overlap, catchup = v_new.catchup,
         catchup_window_ms = v_new.catchup_window_ms, updated_at = now(), next_run_at = v_new.next_run_at
   where s.id = p_id
  returning s.*;
  perform pg_notify('durably_schedules', p_id);
end $$;

create function durably.delete_schedule(p_id text) returns boolean
language plpgsql as $$
begin
  delete from durably.schedules s where s.id = p_id;
  if found then
    perform pg_notify('durably_schedules', p_id);
  end if;
  return found;
end $$;

-- Pausing stops new ticks; resuming goes on from now (ticks due while paused
-- are not caught up).
create function durably.pause_schedule(p_id text, p_paused boolean default true)
returns setof durably.schedules
language plpgsql as $$
begin
  return query
  update durably.schedules s
     set paused = p_paused, updated_at = now(),
         next_run_at = case when p_paused then s.next_run_at
                            else durably.schedule_next(s.cron, s.every_ms, s.timezone, now()) end
   where s.id = p_id
  returning s.*;
  if not found then
    raise exception using errcode = 'DU003', message = format('schedule %L not found', p_id);
  end if;
  perform pg_notify('durably_schedules', p_id);
end $$;

create function durably.resume_schedule(p_id text)
returns setof durably.schedules language sql as $$
  select * from durably.pause_schedule(p_id, false)
$$;

-- The next p_n run times of a schedule (previews).
create function durably.schedule_preview(p_id text, p_n integer)
returns setof timestamptz
language plpgsql stable as $$
declare
  v_s durably.schedules;
  v_t timestamptz;
begin
  select * into v_s from durably.schedules s where s.id = p_id;
  if not found then
    raise exception using errcode = 'DU003', message = format('schedule %L not found', p_id);
  end if;
  -- one step before the first run to show (schedule_next of a fixed delay adds every_ms)
  v_t := greatest(v_s.next_run_at, now())
         - case when v_s.every_ms is null then interval '1 microsecond' else v_s.every_ms * interval '1 millisecond' end;
  for i in 1..p_n loop
    v_t := durably.schedule_next(v_s.cron, v_s.every_ms, v_s.timezone, v_t);
    exit when v_t is null;
    return next v_t;
  end loop;
end $$;

-- Creates the due ticks of up to p_limit schedules, each in order and at most
-- p_max_ticks per schedule per call (a long catch-up goes on in the next
-- call). Returns how many promises it created and when the earliest schedule
-- is due next, so a ticker knows how long it may sleep.
create function durably.tick(p_limit integer default 100, p_max_ticks integer default 1000)
returns table (created integer, next_run_at timestamptz)
language plpgsql as $$
declare
  v_s        durably.schedules;
  v_t        timestamptz;
  v_ticks    timestamptz[];
  v_window   bigint;
  v_created  integer := 0;
  v_prev     text;
  v_prev_state text;
  v_prev_task  text;
  v_id       text;
  v_new      boolean;
  v_next     timestamptz;
begin
  for v_s in
    select * from durably.schedules s
     where not s.paused and s.next_run_at <= now()
     order by s.next_run_at
     limit p_limit
       for update skip locked
  loop
    -- The due tick times, oldest first.
    v_ticks := '{}';
    v_t := v_s.next_run_at;
    -- latest and none keep at most the newest due tick: start there, not at
    -- the oldest one of a long backlog, which p_max_ticks would cut off
    -- short of now (creating a stale tick as the "latest").
    if v_s.catchup <> 'all' and v_t <= now() then
      v_t := durably.schedule_latest(v_s.cron, v_s.every_ms, v_s.timezone, v_t, now());
    end if;
    while v_t is not null and v_t <= now() and cardinality(v_ticks) < p_max_ticks loop
      v_ticks := v_ticks || v_t;
      v_t := durably.schedule_next(v_s.cron, v_s.every_ms, v_s.timezone, v_t);
    end loop;
    v_next := v_t;

    v_window := coalesce(v_s.catchup_window_ms, case when v_s.catchup = 'none' then 1000 end);
    if v_window is not null then
      v_ticks := array(select x from unnest(v_ticks) x where x >= now() - v_window * interval '1 millisecond' order by x);
    end if;
    if v_s.catchup in ('latest', 'none') and cardinality(v_ticks) > 1 then
      v_ticks := array[v_ticks[cardinality(v_ticks)]];
    end if;

    v_prev := v_s.last_promise_id;
    foreach v_t in array v_ticks loop
      -- buffer_one share-locks the previous promise first (as suspend_task
      -- does): a settle committed meanwhile is seen below, a later one waits
      -- and then finds the callback inserted below. Otherwise the buffered
      -- tick could wait on an already settled promise forever.
      if v_s.overlap = 'buffer_one' then
        perform 1 from durably.promises p where p.id = v_prev for share;
      end if;
      select p.state into v_prev_state from durably.promises p where p.id = v_prev;
      select t.state into v_prev_task from durably.tasks t where t.promise_id = v_prev;
      if v_prev_state = 'pending' and v_s.overlap = 'skip_if_running' then
        continue;
      end if;
      if v_prev_state = 'pending' and v_s.overlap = 'buffer_one' and v_prev_task = 'suspended'
         and exists (select 1 from durably.callbacks c where c.task_id = v_prev) then
        continue;  -- one tick already waits for its predecessor
      end if;
      if v_prev_state = 'pending' and v_s.overlap = 'cancel_and_restart' then
        perform durably.cancel(v_prev, format('canceled by schedule %s for its tick at %s', v_s.id, v_t));
      end if;

      v_id := durably.schedule_promise_id(v_s.id_template, v_s.id, v_t, v_s.occurrence);
      select i.created into v_new
        from durably.invoke(v_id, v_s.func, v_s.args, v_s.group_name, jsonb_build_object(
               'timeout_ms', v_s.timeout_ms,
               'tags', jsonb_build_object(
                 'durably:schedule', v_s.id,
                 'durably:tick', to_char(v_t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')))) i;
      if v_new then
        v_created := v_created + 1;
        if v_prev_state = 'pending' and v_s.overlap = 'buffer_one' then
          update durably.tasks t set state = 'suspended', available_at = 'infinity' where t.promise_id = v_id;
          insert into durably.callbacks (promise_id, task_id) values (v_prev, v_id) on conflict do nothing;
        end if;
      end if;
      v_s.occurrence := v_s.occurrence + 1;
      v_s.last_run_at := v_t;
      v_prev := v_id;
    end loop;

    -- Next is the first run after the due ticks looked at; catch-up latest
    -- and none never leave it in the past.
    if v_s.catchup <> 'all' and v_next <= now() then
      v_next := durably.schedule_next(v_s.cron, v_s.every_ms, v_s.timezone, now());
    end if;
    update durably.schedules s
       set next_run_at = v_next, last_run_at = v_s.last_run_at, last_promise_id = v_prev,
           occurrence = v_s.occurrence
     where s.id = v_s.id;
  end loop;

  return query
  select v_created, min(s.next_run_at) from durably.schedules s where not s.paused;
end $$;

-- Where the pg_cron extension is installed, drives durably.tick() from the
-- database itself, with no Node process. Returns the pg_cron job id.
create function durably.install_pg_cron(p_interval text default '1 second')
returns bigint
language plpgsql as $$
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    raise exception using errcode = 'DU002',
      message = 'the pg_cron extension is not installed in this database (create extension pg_cron first)';
  end if;
  return cron.schedule('durably-tick', p_interval, 'select durably.tick()');
end $$;
