-- durably public SQL API: read-only views and a role for applications.
--
-- Views (read-only, for dashboards, scripts and ORMs):
--   durably.promise_list   promises with their task (group, task state, attempt)
--   durably.task_list      pending dispatches with their function and promise
--   durably.schedule_list  schedules with the state of their latest tick
--   durably.worker_status  (0001) workers, active | stale | stopped
--
-- Role durably_app (NOLOGIN; grant it to the application's login role:
-- `grant durably_app to my_app`): may call the public functions and read the
-- views, but may not write the tables directly. The public functions
-- therefore run with their owner's rights (SECURITY DEFINER) and a fixed
-- search_path, so a caller's search_path cannot redirect them; every body
-- names its objects with the durably. prefix. Roles are cluster-wide: the
-- role is created once per server (by whichever database migrates first) and
-- granted rights in every database that runs this migration. Where the
-- migrating user may not create roles, the role part is skipped with a notice
-- (and can be done later by an administrator: create the role, then
-- `select durably.grant_public_api()` as the schema owner).
--
-- The worker-side procedures (claim_tasks, heartbeat, settle, ...) are not
-- public: EXECUTE on them is revoked from PUBLIC, so only the schema owner
-- (the role durably's workers connect as) runs them.
--
-- A later migration that replaces a public function (CREATE OR REPLACE resets
-- SECURITY DEFINER and SET) must call durably.grant_public_api() again.

create view durably.promise_list as
select p.id, p.state, p.kind, p.func, p.args, p.value, p.tags, p.parent_id, p.root_id,
       p.timeout_at, p.created_at, p.settled_at,
       t.group_name, t.state as task_state, t.attempt, t.available_at, t.worker_id, t.last_error
  from durably.promises p
  left join durably.tasks t on t.promise_id = p.id;

create view durably.task_list as
select t.promise_id, p.func, t.group_name, t.state, t.available_at, t.attempt, t.worker_id,
       t.claimed_at, t.last_error, t.created_at, p.root_id, p.timeout_at
  from durably.tasks t
  join durably.promises p on p.id = t.promise_id;

create view durably.schedule_list as
select s.id, s.cron, s.every_ms, s.timezone, s.func, s.args, s.group_name, s.id_template, s.timeout_ms,
       s.overlap, s.catchup, s.catchup_window_ms, s.paused, s.next_run_at, s.last_run_at,
       s.last_promise_id, p.state as last_state, s.occurrence, s.created_at, s.updated_at
  from durably.schedules s
  left join durably.promises p on p.id = s.last_promise_id;

-- The functions applications may call.
create function durably.public_functions() returns text[]
language sql immutable as $$
  select array[
    'invoke', 'invoke_many', 'create_promise', 'resolve', 'reject', 'cancel', 'expire_promises',
    'create_schedule', 'delete_schedule', 'pause_schedule', 'resume_schedule', 'schedule_preview', 'tick',
    'cron_next', 'cron_next_n', 'cron_parse', 'cron_validate']
$$;

-- Makes the public functions SECURITY DEFINER with a fixed search_path,
-- revokes EXECUTE on every function of the schema from PUBLIC, and grants
-- durably_app (when the role exists) EXECUTE on the public functions (every
-- overload) and SELECT on the views. Idempotent.
create function durably.grant_public_api() returns void
language plpgsql as $$
declare
  r record;
  v_role boolean := exists (select 1 from pg_catalog.pg_roles where rolname = 'durably_app');
begin
  execute 'revoke execute on all functions in schema durably from public';
  for r in
    select p.oid::regprocedure as sig, p.proname = any(durably.public_functions()) as public
      from pg_catalog.pg_proc p
     where p.pronamespace = 'durably'::regnamespace and p.prokind = 'f'
  loop
    if r.public then
      execute format('alter function %s security definer set search_path = pg_catalog, pg_temp', r.sig);
      if v_role then
        execute format('grant execute on function %s to durably_app', r.sig);
      end if;
    end if;
  end loop;
  if v_role then
    execute 'grant usage on schema durably to durably_app';
    execute 'grant select on durably.promise_list, durably.task_list, durably.schedule_list, durably.worker_status to durably_app';
  end if;
end $$;

do $$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'durably_app') then
    begin
      create role durably_app nologin;
    exception
      -- another database of this server created it meanwhile
      when duplicate_object or unique_violation then null;
      when insufficient_privilege then
        raise notice 'durably: no permission to create role durably_app; create it and run select durably.grant_public_api()';
    end;
  end if;
end $$;

select durably.grant_public_api();
