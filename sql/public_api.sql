-- durably public SQL API: read-only views, and what the role durably_app may do.
--
-- Views (read-only, for dashboards, scripts and ORMs):
--   durably.promise_list   promises with their task (group, task state, attempt)
--   durably.task_list      pending dispatches with their function and promise
--   durably.schedule_list  schedules with the state of their latest tick
--   durably.worker_status  workers, active | stale | stopped
--   durably.limit_list     flow control limits with their running counts (sql/limits.sql)
--
-- Role durably_app (NOLOGIN, created by migration 0004; grant it to the
-- application's login role: `grant durably_app to my_app`): may call the
-- public functions and read the views, but may not write the tables directly.
-- The public functions therefore run with their owner's rights (SECURITY
-- DEFINER) and a fixed search_path, so a caller's search_path cannot redirect
-- them; every body names its objects with the durably. prefix.
--
-- The worker-side procedures (claim_tasks, heartbeat, settle, ...) are not
-- public: EXECUTE on them is revoked from PUBLIC, so only the schema owner
-- (the role durably's workers connect as) runs them.
--
-- CREATE OR REPLACE resets SECURITY DEFINER and SET: the migrator calls
-- durably.grant_public_api() after it applies any definition file.

create or replace view durably.promise_list as
select p.id, p.state, p.kind, p.func, p.args, p.value, p.tags, p.parent_id, p.root_id,
       p.timeout_at, p.created_at, p.settled_at,
       t.group_name, t.state as task_state, t.attempt,
       -- claimed: the lease expiry; ready: since when it may run (due or woken)
       case when t.state = 'claimed' then t.lease_until else greatest(t.available_at, t.woken_at) end as available_at, t.worker_id, t.last_error
  from durably.promises p
  left join durably.tasks t on t.promise_seq = p.seq;

-- waiting_for_worker: ready, but no live worker of its group registers its
-- function (callers are often deployed before workers): it runs when one
-- arrives, or ends by its own timeout.
-- parked_on: the limit key whose full concurrency holds the ready task back.
create or replace view durably.task_list as
select t.promise_id, p.func, t.group_name, t.state,
       -- claimed: the lease expiry; ready: since when it may run (due or woken)
       case when t.state = 'claimed' then t.lease_until else greatest(t.available_at, t.woken_at) end as available_at, t.attempt, t.worker_id,
       t.claimed_at, t.last_error, t.created_at, p.root_id, p.timeout_at,
       t.state = 'ready' and not exists (
         select 1 from durably.workers w
          where w.group_name = t.group_name and t.func = any(w.functions) and w.stopped_at is null
            and w.heartbeat_at >= now() - make_interval(secs => w.lease_ms / 1000.0)) as waiting_for_worker,
       t.concurrency_key, t.priority, t.parked_on
  from durably.tasks t
  join durably.promises p on p.seq = t.promise_seq;

create or replace view durably.schedule_list as
select s.id, s.cron, s.every_ms, s.timezone, s.func, s.args, s.group_name, s.id_template, s.timeout_ms,
       s.overlap, s.catchup, s.catchup_window_ms, s.paused, s.next_run_at, s.last_run_at,
       s.last_promise_id, p.state as last_state, s.occurrence, s.created_at, s.updated_at,
       s.last_error, s.retry_at
  from durably.schedules s
  left join durably.promises p on p.id = s.last_promise_id;

-- Operators' view: a worker is stale when it missed its lease without stopping.
-- (columns listed: a view's columns may only be added at its end)
create or replace view durably.worker_status as
select w.id, w.group_name, w.host, w.pid, w.functions, w.lease_ms, w.started_at, w.heartbeat_at, w.stopped_at,
       case when w.stopped_at is not null then 'stopped'
            when w.heartbeat_at < now() - make_interval(secs => w.lease_ms / 1000.0) then 'stale'
            else 'active' end as status
  from durably.workers w;

-- The functions applications may call.
create or replace function durably.public_functions() returns text[]
language sql immutable as $$
  select array[
    'invoke', 'invoke_many', 'create_promise', 'resolve', 'reject', 'cancel', 'expire_promises', 'await_promise', 'watch', 'unwatch',
    'create_schedule', 'delete_schedule', 'pause_schedule', 'resume_schedule', 'trigger_schedule', 'schedule_preview', 'tick',
    'cron_next', 'cron_next_n', 'cron_parse', 'cron_validate', 'metric_samples', 'set_limit', 'delete_limit']
$$;

-- Makes the public functions, and the trigger functions (which run as the
-- role that commits: durably.hand_off), SECURITY DEFINER with a fixed
-- search_path, owned by durably_owner (when the role exists and the
-- migrating user may act as it), revokes EXECUTE on every function of the
-- schema from PUBLIC, and grants durably_app (when the role exists) EXECUTE
-- on the public functions (every overload) and SELECT on the views.
-- durably_owner gets what the public functions use: the tables and the
-- other functions of the schema. Idempotent.
create or replace function durably.grant_public_api() returns void
language plpgsql as $$
declare
  r record;
  v_role boolean := exists (select 1 from pg_catalog.pg_roles where rolname = 'durably_app');
  v_owner boolean := exists (select 1 from pg_catalog.pg_roles where rolname = 'durably_owner')
                     and pg_catalog.pg_has_role(current_user, 'durably_owner', 'member');
begin
  execute 'revoke execute on all routines in schema durably from public';
  -- the views' rights first, in the order databases migrated by earlier versions have them
  if v_role then
    execute 'grant usage on schema durably to durably_app';
    execute 'grant select on durably.promise_list, durably.task_list, durably.schedule_list, durably.worker_status to durably_app';
    execute 'grant select on durably.limit_list to durably_app';
  end if;
  if v_owner then
    execute 'grant usage, create on schema durably to durably_owner';
    execute 'grant select, insert, update, delete on all tables in schema durably to durably_owner';
    execute 'grant usage, select on all sequences in schema durably to durably_owner';
    execute 'grant execute on all routines in schema durably to durably_owner';
  end if;
  for r in
    select p.oid::regprocedure as sig, p.proname = any(durably.public_functions()) as public,
           p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype as trigger
      from pg_catalog.pg_proc p
     where p.pronamespace = 'durably'::regnamespace and p.prokind = 'f'
  loop
    if r.public or r.trigger then
      execute format('alter function %s security definer set search_path = pg_catalog, pg_temp', r.sig);
      if v_owner then
        execute format('alter function %s owner to durably_owner', r.sig);
      end if;
      if v_role and r.public then
        execute format('grant execute on function %s to durably_app', r.sig);
      end if;
    end if;
  end loop;
end $$;
