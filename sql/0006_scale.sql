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

-- Settlements are HOT updates, and workers find promises by sequence number.
-- A settlement used to rewrite every index of the promise: state was in the
-- predicate of promises_pending_timeout and settled_at was the key of
-- promises_settled_roots, so the update could not be HOT, and it inserted
-- into the text primary key, a different cold page for nearly every promise
-- of a large backlog. Now no index of promises covers a column a settlement
-- changes, the pages keep room for the settled version (fillfactor 50: a
-- promise is written twice), and the worker passes the sequence numbers that
-- claim_tasks returned. The worker's hot path never reads the text key.
--   * Deadlines of pending promises live in durably.deadlines (inserted with
--     the promise, deleted when it settles); expire_promises reads them.
--   * Retention finds old roots by created_at (prune_promises checks
--     settled_at on the row).

create table durably.deadlines (
  promise_seq bigint primary key,
  timeout_at  timestamptz not null
);
create index deadlines_due on durably.deadlines (timeout_at);
insert into durably.deadlines (promise_seq, timeout_at)
select p.seq, p.timeout_at from durably.promises p where p.state = 'pending';

drop index durably.promises_pending_timeout;
drop index durably.promises_settled_roots;
create index promises_roots on durably.promises (created_at) where parent_id is null;
-- New pages only; existing ones keep their fill until rewritten.
alter table durably.promises set (fillfactor = 50);

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
  ), deadlines as (
    insert into durably.deadlines (promise_seq, timeout_at)
    select ins.seq, v_timeout_at from ins
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

-- create_promise: a pending promise gets its deadline row.
create or replace function durably.create_promise(
  p_id text, p_kind text, p_timeout_at timestamptz,
  p_state text default 'pending', p_value jsonb default null,
  p_parent_id text default null, p_func text default null, p_tags jsonb default '{}',
  p_timeout_ms bigint default null
) returns table (id text, kind text, func text, state text, value jsonb, timeout_at timestamptz,
                 created boolean, db_now timestamptz)
language plpgsql as $$
declare
  v_root text;
begin
  perform durably.check_ids(array[p_id]);
  if p_timeout_at is null and p_timeout_ms is null then
    raise exception using errcode = 'DU002', message = 'a promise needs p_timeout_at or p_timeout_ms';
  end if;
  if p_kind not in ('step', 'sleep', 'external') then
    raise exception using errcode = 'DU002', message = format('invalid promise kind %L: step, sleep or external', p_kind);
  end if;
  if p_parent_id is not null then
    select p.root_id into v_root from durably.promises p where p.id = p_parent_id;
  end if;

  return query
  with ins as (
    insert into durably.promises as p (id, kind, func, state, value, timeout_at, tags, parent_id, root_id, settled_at)
    values (p_id, p_kind, p_func, p_state, p_value,
            coalesce(p_timeout_at, now() + p_timeout_ms * interval '1 millisecond'), coalesce(p_tags, '{}'), p_parent_id,
            coalesce(v_root, p_id), case when p_state <> 'pending' then now() end)
    on conflict on constraint promises_pkey do nothing
    returning p.id, p.kind, p.func, p.state, p.value, p.timeout_at, p.seq
  ), deadline as (
    insert into durably.deadlines (promise_seq, timeout_at)
    select ins.seq, ins.timeout_at from ins where ins.state = 'pending'
  )
  select ins.id, ins.kind, ins.func, ins.state, ins.value, ins.timeout_at, true, now() from ins;
  if not found then
    return query
    select p.id, p.kind, p.func, p.state, p.value, p.timeout_at, false, now()
      from durably.promises p where p.id = p_id;
  end if;
end $$;

-- expire_promises: due deadlines, oldest first; settled by the sequence
-- numbers the join already found.
create or replace function durably.expire_promises(p_limit integer default 1000)
returns integer
language plpgsql as $$
declare
  v_ids text[];
  v_seqs bigint[];
  v_states text[];
  v_values jsonb[];
begin
  select coalesce(array_agg(d.id order by d.id), '{}'),
         coalesce(array_agg(d.seq order by d.id), '{}'),
         coalesce(array_agg(case d.kind when 'sleep' then 'resolved' else 'rejected_timedout' end order by d.id), '{}'),
         coalesce(array_agg(case d.kind when 'sleep' then null
                              else jsonb_build_object('name', 'TimeoutError',
                                     'message', format('promise %s timed out at %s', d.id, d.timeout_at)) end
                            order by d.id), '{}')
    into v_ids, v_seqs, v_states, v_values
    from (select p.id, p.seq, p.kind, p.timeout_at
            from durably.deadlines dl join durably.promises p on p.seq = dl.promise_seq
           where dl.timeout_at <= now() and p.state = 'pending'
           order by dl.timeout_at limit p_limit
             for update of p skip locked) d;
  perform durably.settle_many(v_ids, v_states, v_values, v_seqs);
  return cardinality(v_ids);
end $$;

-- settle_many: workers pass the sequence numbers claim_tasks returned
-- (p_seqs), so the rows are found without the text key; others pass ids
-- only. Tasks and deadlines go with the promises settled here (a settled
-- promise has neither: every settlement passes here).
drop function durably.settle_many(text[], text[], jsonb[]);
create function durably.settle_many(p_ids text[], p_states text[], p_values jsonb[], p_seqs bigint[] default null)
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
  if p_seqs is not null and cardinality(p_seqs) <> coalesce(cardinality(p_ids), 0) then
    raise exception using errcode = 'DU002', message = 'ids and sequence numbers must have the same length';
  end if;

  -- Callers other than workers pass ids only: their sequence numbers are
  -- looked up first (null for unknown ids), in the order of p_ids.
  v_seqs := coalesce(p_seqs, array(
    select p.seq from unnest(p_ids) with ordinality as u(id, n)
      left join durably.promises p on p.id = u.id
     order by u.n));

  with input as (
    select u.id, u.state, u.value, u.seq from unnest(p_ids, p_states, p_values, v_seqs) as u(id, state, value, seq)
  ), settled as (
    update durably.promises p
       set state = i.state, value = i.value, settled_at = now()
      from input i
     where p.seq = i.seq and p.id = i.id and p.state = 'pending'
    returning p.id, p.seq
  )
  select coalesce(array_agg(settled.id), '{}'), coalesce(array_agg(settled.seq), '{}')
    into v_settled, v_seqs from settled;

  if cardinality(v_settled) = 0 then
    return;
  end if;

  delete from durably.tasks t where t.promise_seq = any(v_seqs);
  delete from durably.deadlines d where d.promise_seq = any(v_seqs);

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

-- claim_tasks: picks, rewrites and joins by sequence number, and returns it
-- for the settlement.
drop function durably.claim_tasks(uuid, text, integer, integer);
create function durably.claim_tasks(p_worker uuid, p_group text, p_limit integer, p_lease_ms integer)
returns table (id text, func text, args jsonb, state text, timeout_at timestamptz, root_id text,
               attempt integer, retry jsonb, history jsonb, seq bigint)
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
         end,
         p.seq
    from claimed c join durably.promises p on p.seq = c.promise_seq
   where p.seq = any(v_seqs);
end $$;

-- A busy worker's turn in one transaction: writes the outcomes of the
-- executions that finished and claims the next tasks. One commit instead of
-- two; settle_many and claim_tasks as they are.
create function durably.settle_and_claim(
  p_worker uuid, p_group text, p_limit integer, p_lease_ms integer,
  p_ids text[], p_states text[], p_values jsonb[], p_seqs bigint[]
) returns table (id text, func text, args jsonb, state text, timeout_at timestamptz, root_id text,
                 attempt integer, retry jsonb, history jsonb, seq bigint)
language plpgsql as $$
begin
  perform durably.settle_many(p_ids, p_states, p_values, p_seqs);
  return query select * from durably.claim_tasks(p_worker, p_group, p_limit, p_lease_ms);
end $$;

-- heartbeat: renews only the leases the worker knows it holds. A claim whose
-- reply was lost (the connection dropped after the commit) leaves tasks
-- claimed by this worker that it never received; renewing every task of the
-- worker would keep them claimed, and never run, for as long as the worker
-- lives. Not renewed, their leases expire and another claim runs them.
create or replace function durably.heartbeat(p_worker uuid, p_lease_ms integer, p_held text[])
returns table (id text, state text)
language plpgsql as $$
declare
  v_renewed text[];
begin
  update durably.workers w set heartbeat_at = now() where w.id = p_worker;
  with renewed as (
    update durably.tasks t
       set available_at = now() + p_lease_ms * interval '1 millisecond'
     where t.worker_id = p_worker and t.state = 'claimed' and t.promise_id = any(p_held)
    returning t.promise_id
  )
  select coalesce(array_agg(r.promise_id), '{}') into v_renewed from renewed r;
  -- A statement of its own, so a fresh snapshot: when the update above waited
  -- for a settlement (cancel, expiry) that deleted a task, the state read here
  -- is the settled one, not the 'pending' of the update's snapshot.
  return query
  select h.id, p.state
    from unnest(p_held) as h(id)
    left join durably.promises p on p.id = h.id
   where h.id <> all (v_renewed);
end $$;

-- prune_promises: old roots by created_at (an index settlements do not touch).
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
           where p.parent_id is null and p.created_at < now() - p_older_than
             and p.settled_at < now() - p_older_than
           order by p.created_at
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
  delete from durably.deadlines d where d.promise_seq = any(v_seqs);
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
