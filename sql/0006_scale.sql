-- Engine changes for large backlogs (a million pending invocations, millions
-- of retained results).
--
-- Tasks are keyed by their promise's sequence number, not by its text id. A
-- claim rewrites its task row (the lease moves available_at, an indexed
-- column), so every claim inserts into each index of tasks. Keyed by text
-- ids, which callers choose and which rarely sort in creation order, that
-- insert and the lookup before it land on a different index page for every
-- task: on a backlog larger than shared_buffers each claim of 100 read and
-- rewrote about 60 pages of the key. Sequence numbers follow creation order,
-- so a backlog is claimed, joined and deleted page after page.

alter table durably.promises add column seq bigint generated always as identity;
create unique index promises_seq on durably.promises (seq);

alter table durably.tasks add column promise_seq bigint;
update durably.tasks t set promise_seq = p.seq from durably.promises p where p.id = t.promise_id;
alter table durably.tasks alter column promise_seq set not null;
alter table durably.tasks drop constraint tasks_pkey;
alter table durably.tasks add constraint tasks_pkey primary key (promise_seq);

-- invoke_many: the rows it returns are found by key, never by scanning.
-- The previous version returned `p.id = any(v_created)` for every row, which
-- is quadratic in the chunk size, and once PL/pgSQL switched to a generic plan
-- (after five calls) the lookup became a scan of all promises.
create or replace function durably.invoke_many(
  p_ids text[], p_funcs text[], p_args jsonb[], p_group text, p_opts jsonb default '{}'
) returns table (id text, state text, value jsonb, timeout_at timestamptz, created boolean)
language plpgsql as $$
declare
  v_timeout_at timestamptz;
  v_available  timestamptz;
  v_parent     text := p_opts->>'parent_id';
  v_root       text := p_opts->>'root_id';
  v_created    text[];
begin
  perform durably.check_ids(p_ids);
  if coalesce(cardinality(p_funcs), 0) <> coalesce(cardinality(p_ids), 0)
     or coalesce(cardinality(p_args), 0) <> coalesce(cardinality(p_ids), 0) then
    raise exception using errcode = 'DU002', message = 'ids, functions and args must have the same length';
  end if;
  if p_group is null or p_group = '' or length(p_group) > 128 then
    raise exception using errcode = 'DU002', message = format('invalid group %L: 1 to 128 characters', p_group);
  end if;
  if exists (select 1 from unnest(p_funcs) f where f is null or f = '' or length(f) > 255) then
    raise exception using errcode = 'DU002', message = 'function names are 1 to 255 characters';
  end if;
  if exists (select 1 from unnest(p_args) a where a is null or jsonb_typeof(a) <> 'array') then
    raise exception using errcode = 'DU002', message = 'args must be a JSON array';
  end if;
  if p_opts ? 'tags' and jsonb_typeof(p_opts->'tags') <> 'object' then
    raise exception using errcode = 'DU002', message = 'tags must be a JSON object';
  end if;

  v_timeout_at := coalesce((p_opts->>'timeout_at')::timestamptz,
                           now() + coalesce((p_opts->>'timeout_ms')::bigint, 86400000) * interval '1 millisecond');
  v_available  := now() + coalesce((p_opts->>'delay_ms')::bigint, 0) * interval '1 millisecond';
  if v_parent is not null and v_root is null then
    select p.root_id into v_root from durably.promises p where p.id = v_parent;
  end if;

  with input as (
    select u.id, u.func, u.args from unnest(p_ids, p_funcs, p_args) as u(id, func, args)
  ), ins as (
    insert into durably.promises as p (id, func, args, kind, timeout_at, tags, parent_id, root_id)
    select i.id, i.func, i.args, 'invoke', v_timeout_at, coalesce(p_opts->'tags', '{}'), v_parent, coalesce(v_root, i.id)
      from input i
    on conflict on constraint promises_pkey do nothing
    returning p.id, p.seq
  ), tasks as (
    insert into durably.tasks (promise_seq, promise_id, group_name, available_at, retry)
    select ins.seq, ins.id, p_group, v_available, p_opts->'retry' from ins
  )
  select coalesce(array_agg(ins.id), '{}') into v_created from ins;

  if cardinality(v_created) > 0 and v_available <= now() then
    perform pg_notify('durably_tasks', p_group);
  end if;

  -- What was created here is known without reading it back.
  return query
  select c.id, 'pending'::text, null::jsonb, v_timeout_at, true from unnest(v_created) c(id);
  -- The rest existed. A separate statement: under READ COMMITTED it sees rows
  -- that a concurrent creator committed while the insert above waited on them.
  return query
  select p.id, p.state, p.value, p.timeout_at, false
    from durably.promises p
   where p.id in (select unnest(p_ids) except select unnest(v_created));
end $$;

-- settle_many: tasks are found by the sequence numbers of the promises
-- settled here (a settled promise has no task: every settlement passes here).
create or replace function durably.settle_many(p_ids text[], p_states text[], p_values jsonb[])
returns table (id text)
language plpgsql as $$
declare
  v_settled text[];
  v_seqs    bigint[];
  v_wake    bigint[];
  v_groups  text[];
  v_payload text;
begin
  if exists (select 1 from unnest(p_states) s
              where s is null or s not in ('resolved', 'rejected', 'rejected_canceled', 'rejected_timedout')) then
    raise exception using errcode = 'DU002', message = 'a settled state is resolved, rejected, rejected_canceled or rejected_timedout';
  end if;

  with input as (
    select u.id, u.state, u.value from unnest(p_ids, p_states, p_values) as u(id, state, value)
  ), settled as (
    update durably.promises p
       set state = i.state, value = i.value, settled_at = now()
      from input i
     where p.id = i.id and p.state = 'pending'
    returning p.id, p.seq
  )
  select coalesce(array_agg(settled.id), '{}'), coalesce(array_agg(settled.seq), '{}')
    into v_settled, v_seqs from settled;

  if cardinality(v_settled) = 0 then
    return;
  end if;

  delete from durably.tasks t where t.promise_seq = any(v_seqs);

  -- Wake the tasks suspended on what settled here. Found by key, in steps:
  -- one statement joining callbacks, promises and tasks is planned as a scan
  -- of every task whenever the statistics say that few are suspended.
  with fired as (
    delete from durably.callbacks c where c.promise_id = any(v_settled) returning c.task_id
  )
  select array_agg(p.seq) into v_wake
    from durably.promises p where p.id in (select f.task_id from fired f);
  if v_wake is not null then
    with woke as (
      update durably.tasks t
         set state = 'ready', available_at = now()
       where t.promise_seq = any(v_wake) and t.state = 'suspended'
      returning t.group_name
    )
    select array_agg(distinct w.group_name) into v_groups from woke w;
  end if;
  perform pg_notify('durably_tasks', g) from unnest(v_groups) g;

  v_payload := array_to_string(v_settled, E'\n');
  perform pg_notify('durably_settled', case when octet_length(v_payload) <= 7900 then v_payload else '*' end);

  return query select unnest(v_settled);
end $$;

-- claim_tasks: picks, rewrites and joins by sequence number.
create or replace function durably.claim_tasks(p_worker uuid, p_group text, p_limit integer, p_lease_ms integer)
returns table (id text, func text, args jsonb, state text, timeout_at timestamptz, root_id text,
               attempt integer, retry jsonb, history jsonb)
language plpgsql as $$
declare
  v_seqs bigint[];
begin
  select array_agg(k.promise_seq) into v_seqs
    from (select t.promise_seq from durably.tasks t
           where t.group_name = p_group and t.available_at <= now()
           order by t.available_at
           limit p_limit
             for update skip locked) k;
  if v_seqs is null then
    return;
  end if;
  return query
  with claimed as (
    update durably.tasks t
       set state = 'claimed', worker_id = p_worker, claimed_at = now(),
           available_at = now() + p_lease_ms * interval '1 millisecond',
           attempt = t.attempt + (t.state = 'claimed')::integer,
           replay = t.replay or t.state = 'claimed'
     where t.promise_seq = any(v_seqs)
    returning t.promise_seq, t.attempt, t.retry, t.replay
  )
  select p.id, p.func, p.args, p.state, p.timeout_at, p.root_id, c.attempt, c.retry,
         case when c.replay then
           (select coalesce(jsonb_agg(jsonb_build_object(
                     'id', h.id, 'kind', h.kind, 'func', h.func, 'state', h.state,
                     'value', h.value, 'timeout_at', h.timeout_at)), '[]')
              from durably.promises h where h.parent_id = p.id)
         end
    from claimed c join durably.promises p on p.seq = c.promise_seq
   where p.seq = any(v_seqs);
end $$;

create or replace function durably.prune_promises(p_older_than interval default '7 days', p_limit integer default 1000)
returns integer
language plpgsql as $$
declare
  v_roots text[];
  v_tree  text[];
  v_seqs  bigint[];
begin
  select coalesce(array_agg(r.id), '{}') into v_roots
    from (select p.id from durably.promises p
           where p.parent_id is null and p.settled_at < now() - p_older_than
           order by p.settled_at
           limit p_limit
             for update skip locked) r;
  if cardinality(v_roots) = 0 then
    return 0;
  end if;
  with recursive tree as (
    select p.id, p.seq from durably.promises p where p.id = any(v_roots)
    union all
    select c.id, c.seq from durably.promises c join tree t on c.parent_id = t.id
  )
  select array_agg(tree.id), array_agg(tree.seq) into v_tree, v_seqs from tree;
  delete from durably.tasks t where t.promise_seq = any(v_seqs);
  delete from durably.callbacks c where c.task_id = any(v_tree) or c.promise_id = any(v_tree);
  delete from durably.promises p where p.id = any(v_tree);
  return cardinality(v_tree);
end $$;

-- tick: looks tasks up through their promise.
create or replace function durably.tick(p_limit integer default 100, p_max_ticks integer default 1000)
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
      select t.state into v_prev_task
        from durably.promises p join durably.tasks t on t.promise_seq = p.seq where p.id = v_prev;
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
          update durably.tasks t set state = 'suspended', available_at = 'infinity'
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
           occurrence = v_s.occurrence
     where s.id = v_s.id;
  end loop;

  return query
  select v_created, min(s.next_run_at) from durably.schedules s where not s.paused;
end $$;

create or replace view durably.promise_list as
select p.id, p.state, p.kind, p.func, p.args, p.value, p.tags, p.parent_id, p.root_id,
       p.timeout_at, p.created_at, p.settled_at,
       t.group_name, t.state as task_state, t.attempt, t.available_at, t.worker_id, t.last_error
  from durably.promises p
  left join durably.tasks t on t.promise_seq = p.seq;

create or replace view durably.task_list as
select t.promise_id, p.func, t.group_name, t.state, t.available_at, t.attempt, t.worker_id,
       t.claimed_at, t.last_error, t.created_at, p.root_id, p.timeout_at
  from durably.tasks t
  join durably.promises p on p.seq = t.promise_seq;

-- CREATE OR REPLACE reset the public functions' SECURITY DEFINER and rights.
select durably.grant_public_api();
