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

-- Operators' view: a worker is stale when it missed its lease without stopping.
create view durably.worker_status as
select w.*,
       case when w.stopped_at is not null then 'stopped'
            when w.heartbeat_at < now() - make_interval(secs => w.lease_ms / 1000.0) then 'stale'
            else 'active' end as status
  from durably.workers w;

------------------------------------------------------------------------------
-- Validation
------------------------------------------------------------------------------

create function durably.check_ids(p_ids text[]) returns void
language plpgsql immutable as $$
declare
  v_bad text;
begin
  select i into v_bad from unnest(p_ids) i
   where i is null or i = '' or length(i) > 512 or i ~ '[[:cntrl:]]'
   limit 1;
  if found then
    raise exception using errcode = 'DU001',
      message = format('invalid promise id %s: ids are 1 to 512 characters with no control characters',
                       coalesce(quote_literal(left(v_bad, 80)), 'NULL'));
  end if;
end $$;

------------------------------------------------------------------------------
-- Creating invocations
------------------------------------------------------------------------------

-- Creates one promise + task per id; ids that exist are returned as they are
-- (created = false) and start nothing. One NOTIFY per call, not per row.
-- p_opts: timeout_ms | timeout_at, tags, retry, delay_ms, parent_id, root_id.
create function durably.invoke_many(
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
    returning p.id
  ), tasks as (
    insert into durably.tasks (promise_id, group_name, available_at, retry)
    select ins.id, p_group, v_available, p_opts->'retry' from ins
  )
  select coalesce(array_agg(ins.id), '{}') into v_created from ins;

  if cardinality(v_created) > 0 and v_available <= now() then
    perform pg_notify('durably_tasks', p_group);
  end if;

  -- A separate statement: under READ COMMITTED it sees rows that a concurrent
  -- creator committed while the insert above waited on the conflict.
  return query
  select p.id, p.state, p.value, p.timeout_at, p.id = any(v_created)
    from durably.promises p
   where p.id = any(p_ids);
end $$;

create function durably.invoke(
  p_id text, p_func text, p_args jsonb default '[]', p_group text default 'default', p_opts jsonb default '{}'
) returns table (id text, state text, value jsonb, timeout_at timestamptz, created boolean)
language sql as $$
  select * from durably.invoke_many(array[p_id], array[p_func], array[p_args], p_group, p_opts)
$$;

-- A promise that no task runs: a ctx.run checkpoint (created settled), a
-- durable timer (kind sleep, resolves at timeout_at) or an external promise.
-- Dedup by id like invoke_many. With p_timeout_at null the deadline is
-- p_timeout_ms from now on the database's clock; db_now lets callers measure
-- what remains of a timer on that same clock.
create function durably.create_promise(
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
  insert into durably.promises as p (id, kind, func, state, value, timeout_at, tags, parent_id, root_id, settled_at)
  values (p_id, p_kind, p_func, p_state, p_value,
          coalesce(p_timeout_at, now() + p_timeout_ms * interval '1 millisecond'), coalesce(p_tags, '{}'), p_parent_id,
          coalesce(v_root, p_id), case when p_state <> 'pending' then now() end)
  on conflict on constraint promises_pkey do nothing
  returning p.id, p.kind, p.func, p.state, p.value, p.timeout_at, true, now();
  if not found then
    return query
    select p.id, p.kind, p.func, p.state, p.value, p.timeout_at, false, now()
      from durably.promises p where p.id = p_id;
  end if;
end $$;

------------------------------------------------------------------------------
-- Settling
------------------------------------------------------------------------------

-- The one place promises settle. First settlement wins; later ones change
-- nothing. Drops the tasks of the given promises, wakes tasks suspended on the
-- ones settled here, and sends one NOTIFY per call on durably_settled (ids
-- separated by newlines, or '*' when they do not fit in a payload).
create function durably.settle_many(p_ids text[], p_states text[], p_values jsonb[])
returns table (id text)
language plpgsql as $$
declare
  v_settled text[];
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
    returning p.id
  )
  select coalesce(array_agg(settled.id), '{}') into v_settled from settled;

  delete from durably.tasks t where t.promise_id = any(p_ids);

  if cardinality(v_settled) = 0 then
    return;
  end if;

  with fired as (
    delete from durably.callbacks c where c.promise_id = any(v_settled) returning c.task_id
  ), woke as (
    update durably.tasks t
       set state = 'ready', available_at = now()
     where t.promise_id in (select f.task_id from fired f) and t.state = 'suspended'
    returning t.group_name
  )
  select array_agg(distinct w.group_name) into v_groups from woke w;
  perform pg_notify('durably_tasks', g) from unnest(v_groups) g;

  v_payload := array_to_string(v_settled, E'\n');
  perform pg_notify('durably_settled', case when octet_length(v_payload) <= 7900 then v_payload else '*' end);

  return query select unnest(v_settled);
end $$;

create function durably.settle(p_id text, p_state text, p_value jsonb default null)
returns setof durably.promises
language plpgsql as $$
begin
  perform durably.settle_many(array[p_id], array[p_state], array[p_value]);
  return query select * from durably.promises p where p.id = p_id;
  if not found then
    raise exception using errcode = 'DU003', message = format('promise %L not found', p_id);
  end if;
end $$;

create function durably.resolve(p_id text, p_value jsonb default null)
returns setof durably.promises language sql as $$
  select * from durably.settle(p_id, 'resolved', p_value)
$$;

create function durably.reject(p_id text, p_error jsonb default null)
returns setof durably.promises language sql as $$
  select * from durably.settle(p_id, 'rejected', p_error)
$$;

-- Cancels a promise and its pending descendants (children, grandchildren...).
create function durably.cancel(p_id text, p_reason text default 'canceled')
returns setof durably.promises
language plpgsql as $$
declare
  v_ids text[];
begin
  with recursive tree as (
    select p.id from durably.promises p where p.id = p_id
    union all
    select c.id from durably.promises c join tree t on c.parent_id = t.id
  )
  select coalesce(array_agg(p.id order by p.id), '{}') into v_ids
    from durably.promises p join tree using (id) where p.state = 'pending';

  perform durably.settle_many(
    v_ids,
    array_fill('rejected_canceled'::text, array[cardinality(v_ids)]),
    array_fill(jsonb_build_object('name', 'CanceledError', 'message', p_reason), array[cardinality(v_ids)]));
  return query select * from durably.settle(p_id, 'rejected_canceled', null);
end $$;

-- Settles pending promises whose timeout_at has passed: timers resolve, all
-- else is rejected_timedout. Any number of callers may run it at once.
create function durably.expire_promises(p_limit integer default 1000)
returns integer
language plpgsql as $$
declare
  v_ids text[];
  v_states text[];
  v_values jsonb[];
begin
  select coalesce(array_agg(d.id order by d.id), '{}'),
         coalesce(array_agg(case d.kind when 'sleep' then 'resolved' else 'rejected_timedout' end order by d.id), '{}'),
         coalesce(array_agg(case d.kind when 'sleep' then null
                              else jsonb_build_object('name', 'TimeoutError',
                                     'message', format('promise %s timed out at %s', d.id, d.timeout_at)) end
                            order by d.id), '{}')
    into v_ids, v_states, v_values
    from (select p.id, p.kind, p.timeout_at from durably.promises p
           where p.state = 'pending' and p.timeout_at <= now()
           order by p.timeout_at limit p_limit
           for update skip locked) d;
  perform durably.settle_many(v_ids, v_states, v_values);
  return cardinality(v_ids);
end $$;

------------------------------------------------------------------------------
-- Workers and leases
------------------------------------------------------------------------------

create function durably.register_worker(
  p_id uuid, p_group text, p_host text, p_pid integer, p_functions text[], p_lease_ms integer
) returns void
language sql as $$
  insert into durably.workers (id, group_name, host, pid, functions, lease_ms)
  values (p_id, p_group, p_host, p_pid, p_functions, p_lease_ms)
  on conflict (id) do update
    set functions = excluded.functions, heartbeat_at = now(), stopped_at = null
$$;

-- Claims up to p_limit runnable tasks of a group under a lease. A task found
-- still claimed has an expired lease: its worker died, which counts as an
-- attempt. History (the promise's children) comes along when there is some.
-- The ids are picked first, and then only those rows are touched, by primary
-- key: one statement joining the pick to both tables gets a generic plan that
-- hash-joins whole tables (a claim would read every retained promise).
create function durably.claim_tasks(p_worker uuid, p_group text, p_limit integer, p_lease_ms integer)
returns table (id text, func text, args jsonb, state text, timeout_at timestamptz, root_id text,
               attempt integer, retry jsonb, history jsonb)
language plpgsql as $$
declare
  v_ids text[];
begin
  select array_agg(k.promise_id) into v_ids
    from (select t.promise_id from durably.tasks t
           where t.group_name = p_group and t.available_at <= now()
           order by t.available_at
           limit p_limit
             for update skip locked) k;
  if v_ids is null then
    return;
  end if;
  return query
  with claimed as (
    update durably.tasks t
       set state = 'claimed', worker_id = p_worker, claimed_at = now(),
           available_at = now() + p_lease_ms * interval '1 millisecond',
           attempt = t.attempt + (t.state = 'claimed')::integer,
           replay = t.replay or t.state = 'claimed'
     where t.promise_id = any(v_ids)
    returning t.promise_id, t.attempt, t.retry, t.replay
  )
  select p.id, p.func, p.args, p.state, p.timeout_at, p.root_id, c.attempt, c.retry,
         case when c.replay then
           (select coalesce(jsonb_agg(jsonb_build_object(
                     'id', h.id, 'kind', h.kind, 'func', h.func, 'state', h.state,
                     'value', h.value, 'timeout_at', h.timeout_at)), '[]')
              from durably.promises h where h.parent_id = p.id)
         end
    from claimed c join durably.promises p on p.id = c.promise_id
   where p.id = any(v_ids);
end $$;

-- One call per worker process renews every lease it holds. Returns the held
-- ids it no longer holds: their promise settled (canceled, timed out, or
-- completed elsewhere) or their lease was lost.
create function durably.heartbeat(p_worker uuid, p_lease_ms integer, p_held text[])
returns table (id text, state text)
language plpgsql as $$
declare
  v_renewed text[];
begin
  update durably.workers w set heartbeat_at = now() where w.id = p_worker;
  with renewed as (
    update durably.tasks t
       set available_at = now() + p_lease_ms * interval '1 millisecond'
     where t.worker_id = p_worker and t.state = 'claimed'
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

-- Puts a failed execution back with a delay; the attempt counter grows.
create function durably.retry_task(p_worker uuid, p_id text, p_delay_ms bigint, p_error jsonb)
returns boolean
language plpgsql as $$
declare
  v_group text;
begin
  update durably.tasks t
     set state = 'ready', worker_id = null, replay = true, attempt = t.attempt + 1, last_error = p_error,
         available_at = now() + p_delay_ms * interval '1 millisecond'
   where t.promise_id = p_id and t.worker_id = p_worker and t.state = 'claimed'
  returning t.group_name into v_group;
  if not found then
    return false;
  end if;
  -- a delayed retry is found by the worker's timer or poll; only an immediate one wakes the group
  if p_delay_ms <= 0 then
    perform pg_notify('durably_tasks', v_group);
  end if;
  return true;
end $$;

-- Suspends an execution until one of p_awaits settles or p_wake_at passes.
-- Returns 'suspended'; 'ready' when an awaited promise settled already (the
-- caller keeps its lease and goes on); 'lost' when the caller's lease is gone.
create function durably.suspend_task(p_worker uuid, p_id text, p_awaits text[], p_wake_at timestamptz)
returns text
language plpgsql as $$
begin
  -- Share-lock the awaited promises first (lock order: promises, then tasks):
  -- a concurrent settle either committed before (seen below) or waits for us
  -- and then finds our callbacks.
  perform 1 from durably.promises p where p.id = any(p_awaits) order by p.id for share;
  if exists (select 1 from durably.promises p where p.id = any(p_awaits) and p.state <> 'pending') then
    return 'ready';
  end if;

  update durably.tasks t
     set state = 'suspended', worker_id = null, replay = true,
         available_at = coalesce(p_wake_at, 'infinity')
   where t.promise_id = p_id and t.worker_id = p_worker and t.state = 'claimed';
  if not found then
    return 'lost';
  end if;

  insert into durably.callbacks (promise_id, task_id)
  select a, p_id from unnest(p_awaits) a
  on conflict do nothing;
  return 'suspended';
end $$;

-- Graceful shutdown: every task the worker holds is ready again at once.
create function durably.release_tasks(p_worker uuid)
returns integer
language plpgsql as $$
declare
  v_count  integer;
  v_groups text[];
begin
  with released as (
    update durably.tasks t
       set state = 'ready', worker_id = null, replay = true, available_at = now()
     where t.worker_id = p_worker and t.state = 'claimed'
    returning t.group_name
  )
  select count(*), array_agg(distinct r.group_name) into v_count, v_groups from released r;
  perform pg_notify('durably_tasks', g) from unnest(v_groups) g;
  update durably.workers w set stopped_at = now() where w.id = p_worker;
  return v_count;
end $$;
