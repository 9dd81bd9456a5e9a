-- Metrics read from the database by each scrape of /metrics (the Prometheus
-- gauges that no single process can count). Cheap enough to scrape every few
-- seconds with millions of retained promises: it reads tasks (only pending
-- work has one), workers and schedules, and promises only by primary key, one
-- row per schedule. Counting tasks reads every task once (a backlog of a
-- million pending invocations takes a few tenths of a second); the oldest
-- runnable task of each group is the first entry of tasks_claim, found with
-- one index probe per group (groups by a skip scan of the same index).
--   durably_tasks{group,state}               tasks per group and state
--   durably_oldest_ready_seconds{group}      how long the longest-waiting runnable task has waited
--                                            (0 when nothing is runnable)
--   durably_workers{group,status}            workers per group and status (durably.worker_status)
--   durably_schedule_lag_seconds{schedule}   how late the latest tick was created, or how
--                                            overdue the next one is while it has not been
--   durably_lease_expirations_total{group}   leases found expired by a claim (a counter:
--                                            durably.lease_expirations, kept by durably.lease_expired)
create or replace function durably.metric_samples()
returns table (metric text, labels jsonb, value double precision)
language sql stable as $$
  with recursive groups (name) as (
    select min(t.group_name) from durably.tasks t
    union all
    select (select min(t.group_name) from durably.tasks t where t.group_name > g.name)
      from groups g where g.name is not null
  )
  select 'durably_tasks', jsonb_build_object('group', t.group_name, 'state', t.state), count(*)::double precision
    from durably.tasks t
   group by t.group_name, t.state
  union all
  -- Runnable: due (available_at passed) and not held under a lease that still
  -- runs. A task waits since it was due, woken (woken_at) or its lease ran
  -- out (lease_until), as durably.runnable_since says (spelled out here:
  -- durably_app calls this function). Along tasks_claim those times grow
  -- but for resumed executions, which come back to their old place: the
  -- first 100 runnable tasks hold the longest wait unless all of them were
  -- woken.
  select 'durably_oldest_ready_seconds', jsonb_build_object('group', g.name),
         coalesce(extract(epoch from now() - (
           select min(case when t.state = 'claimed' then t.lease_until else greatest(t.available_at, t.woken_at) end)
             from (select t.state, t.available_at, t.woken_at, t.lease_until from durably.tasks t
                    where t.group_name = g.name and t.available_at <= now()
                      and not (t.state = 'claimed' and t.lease_until > now())
                    order by t.available_at limit 100) t)), 0)::double precision
    from groups g
   where g.name is not null
  union all
  select 'durably_workers', jsonb_build_object('group', w.group_name, 'status', w.status), count(*)::double precision
    from durably.worker_status w
   group by w.group_name, w.status
  union all
  select 'durably_schedule_lag_seconds', jsonb_build_object('schedule', s.id),
         greatest(0,
                  extract(epoch from p.created_at - s.last_run_at),
                  case when not s.paused and s.next_run_at < now() then extract(epoch from now() - s.next_run_at) end
                 )::double precision
    from durably.schedules s
    left join durably.promises p on p.id = s.last_promise_id
  union all
  select 'durably_lease_expirations_total', jsonb_build_object('group', c.group_name), c.total::double precision
    from durably.lease_expirations c
$$;
