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
--                       most one waits, later ticks are skipped meanwhile. A
--                       tick that suspended on its own timer or child is
--                       running, not waiting: the next one is buffered.
--
-- A schedule whose tick fails (an error while creating its promise) does not
-- stop the others: tick() runs each schedule in a subtransaction, records the
-- error on it (last_error, shown by durably.schedule_list) and tries it again
-- at retry_at, 1 s after the first failure doubling to 60 s, without skipping
-- the tick. create_schedule refuses ids and templates whose tick ids could be
-- invalid, so this is for the unforeseen.
--
-- Each tick's promise is tagged durably:schedule and durably:tick (the tick
-- time, ISO-8601 UTC) so runs are auditable by schedule. Errors: DU002 invalid
-- argument, DU003 not found, DU004 a schedule with this id and another
-- definition exists.

-- The first run of a recurrence strictly after p_after.
create or replace function durably.schedule_next(p_cron text, p_every_ms bigint, p_tz text, p_after timestamptz)
returns timestamptz
language sql stable as $$
  select case when p_cron is not null then durably.cron_next(p_cron, p_after, p_tz)
              else p_after + p_every_ms * interval '1 millisecond' end
$$;

-- The newest run at or before p_upto of a recurrence whose run p_from is due
-- (p_from <= p_upto), without stepping through every run in between: fixed
-- delays by arithmetic; cron by looking back 1 s, 2 s, 4 s ... from p_upto
-- for a run, then bisecting. Used by catch-up latest and none.
create or replace function durably.schedule_latest(p_cron text, p_every_ms bigint, p_tz text, p_from timestamptz, p_upto timestamptz)
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
create or replace function durably.schedule_promise_id(p_template text, p_schedule text, p_tick timestamptz, p_occurrence bigint)
returns text
language sql immutable as $$
  select replace(replace(replace(p_template,
           '{schedule}', p_schedule),
           '{timestamp}', to_char(p_tick at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')),
           '{occurrence}', p_occurrence::text)
$$;

-- The longest promise id a template can produce: the tick time always takes
-- 24 characters, an occurrence at most 19 digits.
create or replace function durably.schedule_longest_id(p_template text, p_schedule text)
returns text
language sql immutable as $$
  select durably.schedule_promise_id(p_template, p_schedule, timestamptz '2000-01-01', 9223372036854775807)
$$;

-- Creates a schedule. The same id with the same definition returns the
-- existing row unchanged (re-running a setup script is a no-op); another
-- definition raises DU004 unless p_replace.
-- p_opts: every_ms (instead of p_cron), timezone, args, group, id_template,
-- timeout_ms, overlap, catchup, catchup_window_ms.
create or replace function durably.create_schedule(
  p_id text, p_cron text, p_func text, p_opts jsonb default '{}', p_replace boolean default false
) returns setof durably.schedules
language plpgsql as $$
declare
  v_new      durably.schedules;
  v_existing durably.schedules;
  v_longest  text;
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
  v_longest := durably.schedule_longest_id(v_new.id_template, p_id);
  if length(v_longest) > 512 then
    raise exception using errcode = 'DU002',
      message = format('schedule %s: its id template %L makes tick ids of up to %s characters, longer than 512 (shorten the schedule id or the template)',
                       left(p_id, 80), left(v_new.id_template, 80), length(v_longest));
  end if;
  if v_longest ~ '[[:cntrl:]]' then
    raise exception using errcode = 'DU002',
      message = format('invalid id template %L: tick ids may not hold control characters', left(v_new.id_template, 80));
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
         catchup_window_ms = v_new.catchup_window_ms, updated_at = now(), next_run_at = v_new.next_run_at,
         last_error = null, retry_at = null
   where s.id = p_id
  returning s.*;
  perform pg_notify('durably_schedules', p_id);
end $$;

create or replace function durably.delete_schedule(p_id text) returns boolean
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
create or replace function durably.pause_schedule(p_id text, p_paused boolean default true)
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

create or replace function durably.resume_schedule(p_id text)
returns setof durably.schedules language sql as $$
  select * from durably.pause_schedule(p_id, false)
$$;

-- The next p_n run times of a schedule (previews).
create or replace function durably.schedule_preview(p_id text, p_n integer)
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
-- Each schedule is a subtransaction of its own: one that fails (its ticks
-- cannot be created) is rolled back alone, records the error and waits for
-- its retry_at; the others tick. 50 schedules a call by default: past 64
-- subtransactions a transaction overflows PostgreSQL's per-backend cache of
-- them, and every snapshot taken meanwhile, in any session, reads pg_subtrans.
-- A ticker calls again at once while schedules are still due.
create or replace function durably.tick(p_limit integer default 50, p_max_ticks integer default 1000)
returns table (created integer, next_run_at timestamptz)
language plpgsql as $$
declare
  v_s        durably.schedules;
  v_t        timestamptz;
  v_ticks    timestamptz[];
  v_window   bigint;
  v_created  integer := 0;
  v_made     integer;
  v_prev     text;
  v_prev_state text;
  v_buffered boolean;
  v_id       text;
  v_new      boolean;
  v_next     timestamptz;
  v_failures integer;
  v_code     text;
  v_message  text;
begin
  if p_limit is null or p_limit not between 1 and 1000 then
    raise exception using errcode = 'DU002', message = format('invalid limit %s: 1 to 1000 schedules a call', p_limit);
  end if;
  if p_max_ticks is null or p_max_ticks not between 1 and 100000 then
    raise exception using errcode = 'DU002', message = format('invalid max ticks %s: 1 to 100000 ticks a schedule', p_max_ticks);
  end if;
  for v_s in
    select * from durably.schedules s
     where not s.paused and s.next_run_at <= now() and (s.retry_at is null or s.retry_at <= now())
     order by s.next_run_at
     limit p_limit
       for update skip locked
  loop
    begin
      -- The due tick times, oldest first.
      v_ticks := '{}';
      v_made := 0;
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
        -- A buffered tick is suspended without ever having run: tick() below
        -- suspended it at creation. One that ran and suspended on its own
        -- timer or child has been claimed.
        select t.state = 'suspended' and t.claimed_at is null into v_buffered
          from durably.promises p join durably.tasks t on t.promise_seq = p.seq where p.id = v_prev;
        if v_prev_state = 'pending' and v_s.overlap = 'skip_if_running' then
          continue;
        end if;
        if v_prev_state = 'pending' and v_s.overlap = 'buffer_one' and v_buffered then
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
          v_made := v_made + 1;
          if v_prev_state = 'pending' and v_s.overlap = 'buffer_one' then
            -- (handed to an idle worker by the invocation: taken back before the commit sends it)
            update durably.tasks t
               set state = 'suspended', available_at = 'infinity', worker_id = null, claimed_at = null,
                   lease_until = null, handed = false
              from durably.promises p where p.id = v_id and t.promise_seq = p.seq;
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
             occurrence = v_s.occurrence, last_error = null, retry_at = null
       where s.id = v_s.id;
      v_created := v_created + v_made;
    exception when others then
      -- Everything this schedule did in this call is rolled back; its due
      -- ticks stay due and are created when it is tried again.
      get stacked diagnostics v_code = returned_sqlstate, v_message = message_text;
      v_failures := coalesce((v_s.last_error->>'failures')::integer, 0) + 1;
      update durably.schedules s
         set last_error = jsonb_build_object('code', v_code, 'message', v_message, 'at', now(), 'failures', v_failures),
             retry_at = now() + least(60, 2 ^ least(v_failures - 1, 6)) * interval '1 second'
       where s.id = v_s.id;
      raise warning 'durably: schedule % failed to tick (failure %), trying again at its retry_at: %',
        v_s.id, v_failures, v_message;
    end;
  end loop;

  return query
  select v_created, min(greatest(s.next_run_at, s.retry_at)) from durably.schedules s where not s.paused;
end $$;

-- Creates one tick of a schedule now, outside its recurrence (an operator's
-- "trigger now"): a promise + task with the schedule's id template, function,
-- args, group, timeout and tags, whether or not the schedule is paused and
-- whatever its overlap policy. It counts as the latest tick (occurrence,
-- last_promise_id), so the next regular tick judges overlap against it; the
-- next run time is unchanged. Waits for a ticker holding the schedule.
create or replace function durably.trigger_schedule(p_id text)
returns table (id text, created boolean)
language plpgsql as $$
declare
  v_s  durably.schedules;
  v_id text;
  v_new boolean;
begin
  select * into v_s from durably.schedules s where s.id = p_id for update;
  if not found then
    raise exception using errcode = 'DU003', message = format('schedule %L not found', p_id);
  end if;
  v_id := durably.schedule_promise_id(v_s.id_template, v_s.id, now(), v_s.occurrence);
  select i.created into v_new
    from durably.invoke(v_id, v_s.func, v_s.args, v_s.group_name, jsonb_build_object(
           'timeout_ms', v_s.timeout_ms,
           'tags', jsonb_build_object(
             'durably:schedule', v_s.id,
             'durably:tick', to_char(now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
             'durably:trigger', 'manual'))) i;
  if v_new then
    update durably.schedules s
       set occurrence = s.occurrence + 1, last_run_at = now(), last_promise_id = v_id
     where s.id = v_s.id;
  end if;
  return query select v_id, v_new;
end $$;

-- Where the pg_cron extension is installed, drives durably.tick() from the
-- database itself, with no Node process: job `durably-tick`, re-installing
-- replaces it. pg_cron 1.5 and later run it every p_interval ('N seconds').
-- Older ones schedule once a minute at the finest, so there the job runs
-- durably.tick_through_minute(N) each minute, which ticks every N seconds
-- until the minute ends, committing each tick. p_interval may also be a
-- cron expression, scheduled as it is. Returns the pg_cron job id.
create or replace function durably.install_pg_cron(p_interval text default '1 second')
returns bigint
language plpgsql as $$
declare
  v_version text;
  v_seconds integer;
begin
  select extversion into v_version from pg_extension where extname = 'pg_cron';
  if v_version is null then
    raise exception using errcode = 'DU002',
      message = 'the pg_cron extension is not installed in this database (create extension pg_cron first)';
  end if;
  v_seconds := (regexp_match(p_interval, '^\s*(\d+)\s*seconds?\s*$'))[1]::integer;
  if v_seconds is not null and (v_seconds < 1 or v_seconds > 59) then
    raise exception using errcode = 'DU002',
      message = format('invalid interval %L: 1 to 59 seconds, or a cron expression', p_interval);
  end if;
  if v_seconds is null
     or string_to_array(split_part(v_version, '-', 1), '.')::integer[] >= array[1, 5] then
    return cron.schedule('durably-tick', p_interval, 'select durably.tick()');
  end if;
  return cron.schedule('durably-tick', '* * * * *', format('call durably.tick_through_minute(%s)', v_seconds));
end $$;

-- Removes the job install_pg_cron created; false when there was none.
create or replace function durably.uninstall_pg_cron()
returns boolean
language plpgsql as $$
declare
  v_job bigint;
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    return false;
  end if;
  execute 'select jobid from cron.job where jobname = $1' into v_job using 'durably-tick';
  if v_job is null then
    return false;
  end if;
  perform cron.unschedule(v_job);
  return true;
end $$;

-- Ticks every p_every_seconds seconds, on whole seconds, until the current
-- minute ends or the job is uninstalled, committing after each tick (so each
-- tick's promises are visible at once): what pg_cron before 1.5 runs each
-- minute. A procedure, called as a statement of its own (`call ...`), not
-- from a transaction.
create or replace procedure durably.tick_through_minute(p_every_seconds integer default 1)
language plpgsql as $$
declare
  v_end timestamptz := date_trunc('minute', clock_timestamp()) + interval '1 minute' - interval '100 milliseconds';
  v_next timestamptz;
  v_installed boolean;
begin
  loop
    perform durably.tick();
    commit;
    v_next := date_trunc('second', clock_timestamp()) + make_interval(secs => p_every_seconds);
    execute 'select exists (select 1 from cron.job where jobname = $1)' into v_installed using 'durably-tick';
    exit when v_next > v_end or not v_installed;
    perform pg_sleep(greatest(0, extract(epoch from v_next - clock_timestamp())));
  end loop;
end $$;
