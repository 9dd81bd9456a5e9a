-- Durable promises: creating them (invocations, steps, timers, external
-- promises) and settling them.
--
-- A promise is a row with a caller-chosen id that settles exactly once:
--   pending -> resolved | rejected | rejected_canceled | rejected_timedout
-- Creating a promise whose id exists returns the existing row (dedup by id).
-- Besides its text id, every promise has a sequence number in creation order
-- (seq): its task and its deadline (durably.deadlines, while it is pending)
-- are keyed by it, and workers settle by it, so a settlement changes no
-- indexed column of promises (a HOT update) and never reads the text key.
--
-- What applications may do through the public functions (role durably_app):
-- create invocations and external promises of no parent, settle external
-- promises (also those a function awaits, ctx.promise()) and invocations of
-- no parent, cancel. Promises inside an invocation's tree (steps, timers,
-- child invocations) are made only by the worker running it
-- (create_invocations, create_child_promise), which never takes a promise
-- made elsewhere under an id of its tree for its own.
--
-- Limits, the same as the TypeScript client's: JSON args, values and errors
-- up to 1 MiB, tags and reasons up to 64 KiB, batches up to 10,000.
--
-- Errors raised here use SQLSTATE class DU:
--   DU001 invalid id, DU002 invalid argument, DU003 not found,
--   DU005 an id of an invocation's tree is taken by another promise.

-- Payloads over p_max bytes of JSON text are refused. The binary size of a
-- jsonb is at least a sixth of its text, so small values are never printed.
create or replace function durably.check_size(p_what text, p_value jsonb, p_max integer default 1048576) returns void
language plpgsql immutable as $$
begin
  if pg_column_size(p_value) * 6 > p_max and octet_length(p_value::text) > p_max then
    raise exception using errcode = 'DU002',
      message = format('%s is %s bytes of JSON; the limit is %s', p_what, octet_length(p_value::text), p_max);
  end if;
end $$;

-- Ids are 1 to 512 characters with no control characters.
create or replace function durably.is_valid_id(p_id text) returns boolean
language sql immutable as $$
  select p_id is not null and p_id <> '' and length(p_id) <= 512 and p_id !~ '[[:cntrl:]]'
$$;

create or replace function durably.check_ids(p_ids text[]) returns void
language plpgsql immutable as $$
declare
  v_bad text;
begin
  select i into v_bad from unnest(p_ids) i where not durably.is_valid_id(i) limit 1;
  if found then
    raise exception using errcode = 'DU001',
      message = format('invalid promise id %s: ids are 1 to 512 characters with no control characters',
                       coalesce(quote_literal(left(v_bad, 80)), 'NULL'));
  end if;
end $$;

-- Invocations from applications: promises of no parent, each with a task.
-- Ids that exist are returned as they are (created = false) and start
-- nothing. One NOTIFY per call, not per row: a wake-up of the group, or one
-- invocation handed to an idle worker (durably.hand_off).
-- p_opts: timeout_ms | timeout_at, tags, retry, delay_ms,
-- concurrency_key and priority (flow control, sql/limits.sql),
-- trace (the invoker's W3C trace context: {"traceparent": ..., "tracestate": ...}),
-- awaited (true: the caller will wait for the results, so their settlements
-- notify durably_settled; see durably.await_promise).
create or replace function durably.invoke_many(
  p_ids text[], p_funcs text[], p_args jsonb[], p_group text, p_opts jsonb default '{}'
) returns table (id text, state text, value jsonb, timeout_at timestamptz, created boolean)
language plpgsql as $$
begin
  if p_opts ?| array['parent_id', 'root_id'] then
    raise exception using errcode = 'DU002',
      message = 'parent_id and root_id are set by the worker running the parent invocation (ctx.rpc), not through invoke';
  end if;
  return query select * from durably.create_invocations(p_ids, p_funcs, p_args, p_group, p_opts);
end $$;

-- Creates one promise + task per id, as invoke_many; p_opts may also place
-- them in a tree (parent_id, root_id: a child invocation, ctx.rpc). An id
-- that exists under another parent is not taken for the child (DU005).
-- The rows it returns are found by key, never by scanning: returning
-- `p.id = any(v_created)` for every row would be quadratic in the chunk size,
-- and once PL/pgSQL switches to a generic plan (after five calls) such a
-- lookup becomes a scan of all promises.
create or replace function durably.create_invocations(
  p_ids text[], p_funcs text[], p_args jsonb[], p_group text, p_opts jsonb default '{}'
) returns table (id text, state text, value jsonb, timeout_at timestamptz, created boolean)
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
set plan_cache_mode = force_generic_plan -- planned once a connection: see durably.claim_tasks
as $$
declare
  v_timeout_at timestamptz;
  v_available  timestamptz;
  v_parent     text := p_opts->>'parent_id';
  v_root       text := p_opts->>'root_id';
  v_created    text[];
  v_existed    text[];
  v_to         uuid;
  v_lease_until timestamptz;
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
  if p_opts ? 'concurrency_key' and (jsonb_typeof(p_opts->'concurrency_key') <> 'string'
     or p_opts->>'concurrency_key' = '' or length(p_opts->>'concurrency_key') > 512) then
    raise exception using errcode = 'DU002', message = 'concurrency_key is a string of 1 to 512 characters';
  end if;
  if p_opts ? 'priority' and (jsonb_typeof(p_opts->'priority') <> 'number'
     or (p_opts->>'priority')::numeric <> trunc((p_opts->>'priority')::numeric)
     or (p_opts->>'priority')::numeric not between -2147483648 and 2147483647) then
    raise exception using errcode = 'DU002', message = 'priority is an integer (higher runs first, default 0)';
  end if;
  if p_opts ? 'awaited' and jsonb_typeof(p_opts->'awaited') <> 'boolean' then
    raise exception using errcode = 'DU002', message = 'awaited is a boolean (whether the caller waits for the result)';
  end if;
  if cardinality(p_ids) > 10000 then
    raise exception using errcode = 'DU002', message = format('%s invocations in one call; the limit is 10000', cardinality(p_ids));
  end if;
  -- check_size's own cheap test, repeated here so that the args of a batch cost
  -- no function call each (the enqueue path): only large ones are checked.
  perform durably.check_size(format('the args of %s', u.id), u.args) from unnest(p_ids, p_args) u(id, args)
   where pg_column_size(u.args) * 6 > 1048576;
  perform durably.check_size('tags', p_opts->'tags', 65536);

  v_timeout_at := coalesce((p_opts->>'timeout_at')::timestamptz,
                           now() + coalesce((p_opts->>'timeout_ms')::bigint, 86400000) * interval '1 millisecond');
  v_available  := now() + coalesce((p_opts->>'delay_ms')::bigint, 0) * interval '1 millisecond';
  if v_parent is not null then
    -- An execution canceled or timed out while it still runs starts nothing more.
    if exists (select 1 from durably.promises p where p.id = v_parent and p.state <> 'pending' and p.kind <> 'step') then
      raise exception using errcode = 'DU002', message = format('promise %s has settled: nothing more is made under it', v_parent);
    end if;
    if v_root is null then
      select p.root_id into v_root from durably.promises p where p.id = v_parent;
    end if;
  end if;

  -- One invocation due now, under no flow control: an idle worker may be
  -- handed it. Its task is then created claimed by that worker, and the
  -- commit sends it (durably.hand_off).
  if cardinality(p_ids) = 1 and v_available <= now() and p_opts->>'concurrency_key' is null
     and coalesce((p_opts->>'priority')::integer, 0) = 0 and not exists (select 1 from durably.limits) then
    select h.worker_id, now() + h.lease_ms * interval '1 millisecond' into v_to, v_lease_until
      from durably.handoff_worker(p_group, p_funcs[1]) h;
  end if;

  with input as (
    select u.id, u.func, u.args from unnest(p_ids, p_funcs, p_args) as u(id, func, args)
  ), ins as (
    insert into durably.promises as p (id, func, args, kind, timeout_at, tags, parent_id, root_id, trace_context, awaited)
    select i.id, i.func, i.args, 'invoke', v_timeout_at, coalesce(p_opts->'tags', '{}'), v_parent, coalesce(v_root, i.id),
           p_opts->'trace', coalesce((p_opts->>'awaited')::boolean, false)
      from input i
    on conflict on constraint promises_pkey do nothing
    returning p.id, p.seq, p.func
  ), tasks as (
    insert into durably.tasks (promise_seq, promise_id, group_name, func, available_at, retry, concurrency_key, priority,
                               state, worker_id, claimed_at, lease_until, handed)
    select ins.seq, ins.id, p_group, ins.func, coalesce(v_lease_until, v_available), p_opts->'retry',
           p_opts->>'concurrency_key', coalesce((p_opts->>'priority')::integer, 0),
           case when v_to is null then 'ready' else 'claimed' end, v_to, case when v_to is not null then now() end,
           v_lease_until, v_to is not null
      from ins
  ), deadlines as (
    insert into durably.deadlines (promise_seq, timeout_at)
    select ins.seq, v_timeout_at from ins
  )
  select coalesce(array_agg(ins.id), '{}') into v_created from ins;

  if cardinality(v_created) > 0 and v_available <= now() and v_to is null then
    perform durably.wake_group(p_group, cardinality(v_created), array(select distinct unnest(p_funcs)));
  end if;

  -- What was created here is known without reading it back.
  return query
  select c.id, 'pending'::text, null::jsonb, v_timeout_at, true from unnest(v_created) c(id);
  -- The rest existed. A separate statement: under READ COMMITTED it sees rows
  -- that a concurrent creator committed while the insert above waited on them.
  -- Looked up by key (= any), also under a generic plan on a table without
  -- statistics, where a join would scan every promise on each call.
  if cardinality(v_created) < cardinality(p_ids) then
    v_existed := array(select unnest(p_ids) except select unnest(v_created));
    return query
    select p.id, p.state, p.value, p.timeout_at, false
      from durably.promises p
     where p.id = any(v_existed);
    if v_parent is not null then
      perform durably.check_child(p.id, p.parent_id, v_parent) from durably.promises p where p.id = any(v_existed);
    end if;
  end if;
end $$;

-- A child's id found taken: by the same child (dedup), or by a promise made
-- elsewhere, which is refused (DU005) and never taken for the child.
create or replace function durably.check_child(p_id text, p_found_parent text, p_parent text) returns void
language plpgsql immutable as $$
begin
  if p_found_parent is distinct from p_parent then
    raise exception using errcode = 'DU005',
      message = format('promise id %s is taken by a promise that is not a child of %s', p_id, p_parent);
  end if;
end $$;

create or replace function durably.invoke(
  p_id text, p_func text, p_args jsonb default '[]', p_group text default 'default', p_opts jsonb default '{}'
) returns table (id text, state text, value jsonb, timeout_at timestamptz, created boolean)
language sql as $$
  select * from durably.invoke_many(array[p_id], array[p_func], array[p_args], p_group, p_opts)
$$;

-- An external promise of no invocation, settled from outside (dedup by id).
-- With p_timeout_at null the deadline is p_timeout_ms from now. The other
-- parameters are kept for callers of earlier versions: promises inside an
-- invocation (p_parent_id, kinds step and sleep, created settled) are made by
-- its worker only.
create or replace function durably.create_promise(
  p_id text, p_kind text, p_timeout_at timestamptz,
  p_state text default 'pending', p_value jsonb default null,
  p_parent_id text default null, p_func text default null, p_tags jsonb default '{}',
  p_timeout_ms bigint default null
) returns table (id text, kind text, func text, state text, value jsonb, timeout_at timestamptz,
                 created boolean, db_now timestamptz)
language plpgsql
-- (create_child_promise carries its planner settings)
as $$
begin
  if p_kind is distinct from 'external' or p_parent_id is not null or p_state is distinct from 'pending' then
    raise exception using errcode = 'DU002', message = format(
      'create_promise makes pending external promises of no parent (asked for %s %s%s): promises inside an invocation are made by its worker',
      coalesce(p_state, 'null'), coalesce(p_kind, 'null'), coalesce(' under ' || p_parent_id, ''));
  end if;
  perform durably.check_size('tags', p_tags, 65536);
  return query select * from durably.create_child_promise(p_id, 'external', null, null, p_timeout_at, p_timeout_ms,
    p_tags => p_tags);
end $$;

-- A promise that no task runs: a ctx.run checkpoint (created settled), a
-- durable timer (kind sleep, resolves at timeout_at) or an external promise,
-- under p_parent_id in the tree of p_root_id (a promise made inside a step
-- that has not finished has no parent row yet: the root is passed, not looked
-- up). Dedup by id like invoke_many, within the same parent: an id taken by
-- another promise is refused (DU005), never taken for this one. With
-- p_timeout_at null the deadline is p_timeout_ms from now on the database's
-- clock; db_now lets callers measure what remains of a timer on that same
-- clock. A pending promise gets its deadline row.
create or replace function durably.create_child_promise(
  p_id text, p_kind text, p_parent_id text, p_root_id text, p_timeout_at timestamptz,
  p_timeout_ms bigint default null, p_state text default 'pending', p_value jsonb default null,
  p_func text default null, p_tags jsonb default '{}'
) returns table (id text, kind text, func text, state text, value jsonb, timeout_at timestamptz,
                 created boolean, db_now timestamptz)
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
set plan_cache_mode = force_generic_plan -- planned once a connection: see durably.claim_tasks
as $$
begin
  perform durably.check_ids(array[p_id]);
  if p_timeout_at is null and p_timeout_ms is null then
    raise exception using errcode = 'DU002', message = 'a promise needs p_timeout_at or p_timeout_ms';
  end if;
  if p_kind is null or p_kind not in ('step', 'sleep', 'external') then
    raise exception using errcode = 'DU002', message = format('invalid promise kind %L: step, sleep or external', p_kind);
  end if;
  -- An execution canceled or timed out while it still runs makes nothing more.
  if exists (select 1 from durably.promises p where p.id = p_parent_id and p.state <> 'pending' and p.kind <> 'step') then
    raise exception using errcode = 'DU002', message = format('promise %s has settled: nothing more is made under it', p_parent_id);
  end if;

  return query
  with ins as (
    insert into durably.promises as p (id, kind, func, state, value, timeout_at, tags, parent_id, root_id, settled_at)
    values (p_id, p_kind, p_func, p_state, p_value,
            coalesce(p_timeout_at, now() + p_timeout_ms * interval '1 millisecond'), coalesce(p_tags, '{}'), p_parent_id,
            coalesce(p_root_id, p_id), case when p_state <> 'pending' then now() end)
    on conflict on constraint promises_pkey do nothing
    returning p.id, p.kind, p.func, p.state, p.value, p.timeout_at, p.seq
  ), deadline as (
    insert into durably.deadlines (promise_seq, timeout_at)
    select ins.seq, ins.timeout_at from ins where ins.state = 'pending'
  )
  select ins.id, ins.kind, ins.func, ins.state, ins.value, ins.timeout_at, true, now() from ins;
  if not found then
    perform durably.check_child(p.id, p.parent_id, p_parent_id) from durably.promises p where p.id = p_id;
    return query
    select p.id, p.kind, p.func, p.state, p.value, p.timeout_at, false, now()
      from durably.promises p where p.id = p_id;
  end if;
end $$;

-- The checkpoints of steps (ctx.run, ctx.now, ctx.random) that executions
-- of one worker finished together, written by one statement and one commit
-- (src/checkpoint-batch.ts), with the settlements of executions that finished
-- meanwhile (p_settle_*: settle_many's arguments, null for none). Each is made
-- as create_child_promise makes a settled step. Those that pass the cheap
-- tests (a valid id, a small value, a parent still pending) are inserted
-- together; the others, and ids that exist, go through create_child_promise
-- one by one. Returns only the checkpoints not stored as sent: the child
-- stored before under that id (the first stored wins), or the reason one
-- cannot be stored (an invalid id, a value over 1 MiB, a parent settled
-- meanwhile, an id taken by another promise), which fails its own execution,
-- not the others.
create or replace function durably.create_steps(
  p_ids text[], p_parent_ids text[], p_root_ids text[], p_funcs text[], p_states text[], p_values jsonb[],
  p_timeout_ats timestamptz[],
  p_settle_ids text[] default null, p_settle_states text[] default null, p_settle_values jsonb[] default null,
  p_settle_seqs bigint[] default null
) returns table (id text, kind text, func text, state text, value jsonb, timeout_at timestamptz, error text)
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
set plan_cache_mode = force_generic_plan -- planned once a connection: see durably.claim_tasks
as $$
declare
  v_created text[];
  r         record;
begin
  if not coalesce(p_states <@ array['resolved', 'rejected'], false) then
    raise exception using errcode = 'DU002', message = 'a step checkpoint is resolved or rejected';
  end if;
  if p_settle_ids is not null then
    perform durably.settle_many(p_settle_ids, p_settle_states, p_settle_values, p_settle_seqs);
  end if;

  -- In id order, so that two batches that insert the same ids (a lease lost
  -- to another worker) wait for each other rather than deadlock.
  with ins as (
    insert into durably.promises as p (id, kind, func, state, value, timeout_at, parent_id, root_id, settled_at)
    select u.id, 'step', u.func, u.state, u.value, u.timeout_at, u.parent_id, u.root_id, now()
      from unnest(p_ids, p_parent_ids, p_root_ids, p_funcs, p_states, p_values, p_timeout_ats)
             as u(id, parent_id, root_id, func, state, value, timeout_at)
     where durably.is_valid_id(u.id) and pg_column_size(u.value) * 6 <= 1048576
       and not exists (select 1 from durably.promises s
                        where s.id = u.parent_id and s.state <> 'pending' and s.kind <> 'step')
     order by u.id
    on conflict on constraint promises_pkey do nothing
    returning p.id
  )
  select array_agg(ins.id) into v_created from ins;
  if cardinality(v_created) = cardinality(p_ids) then
    return;
  end if;

  for r in
    select u.* from unnest(p_ids, p_parent_ids, p_root_ids, p_funcs, p_states, p_values, p_timeout_ats)
                      as u(id, parent_id, root_id, func, state, value, timeout_at)
     where u.id is null or u.id not in (select unnest(coalesce(v_created, '{}')))
  loop
    begin
      perform durably.check_size(format('the result of step %s', r.func), r.value);
      return query
      select c.id, c.kind, c.func, c.state, c.value, c.timeout_at, null::text
        from durably.create_child_promise(r.id, 'step', r.parent_id, r.root_id, r.timeout_at,
               p_state => r.state, p_value => r.value, p_func => r.func) c;
    exception when sqlstate 'DU001' or sqlstate 'DU002' or sqlstate 'DU005' then
      return query select r.id, 'step'::text, r.func, null::text, null::jsonb, null::timestamptz, sqlerrm;
    end;
  end loop;
end $$;

-- The one place promises settle. First settlement wins; later ones change
-- nothing. Drops the tasks of the given promises, wakes tasks suspended on the
-- ones settled here, and notifies durably_settled of those settled here that
-- someone waits on (promises.awaited): ids separated by newlines, one NOTIFY
-- per call unless they do not fit in one payload. A NOTIFY serializes the
-- commits that send one, so settlements nobody waits on send none. While
-- someone watches every settlement (durably.watch: an open dashboard page),
-- each call also notifies durably_watch.
-- Workers pass the sequence numbers claim_tasks returned (p_seqs), so the rows
-- are found without the text key; others pass ids only. Tasks and deadlines
-- go with the promises settled here (a settled promise has neither: every
-- settlement passes here).
create or replace function durably.settle_many(p_ids text[], p_states text[], p_values jsonb[], p_seqs bigint[] default null)
returns table (id text)
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
set plan_cache_mode = force_generic_plan -- planned once a connection: see durably.claim_tasks
as $$
declare
  v_settled text[];
  v_seqs    bigint[];
  v_wake    bigint[];
  v_groups  text[];
  v_funcs   text[];
  v_awaited text[];
  v_held    text[];
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

  -- Lock order: promises by sequence number, before their tasks (every
  -- procedure that locks several promises takes them in this order).
  perform 1 from durably.promises p where p.seq = any(v_seqs) order by p.seq for update;

  with input as (
    select u.id, u.state, u.value, u.seq from unnest(p_ids, p_states, p_values, v_seqs) as u(id, state, value, seq)
  ), settled as (
    update durably.promises p
       set state = i.state, value = i.value, settled_at = now()
      from input i
     where p.seq = i.seq and p.id = i.id and p.state = 'pending'
    returning p.id, p.seq, p.awaited
  )
  select coalesce(array_agg(settled.id), '{}'), coalesce(array_agg(settled.seq), '{}'),
         array_agg(settled.id) filter (where settled.awaited)
    into v_settled, v_seqs, v_awaited from settled;

  if cardinality(v_settled) = 0 then
    return;
  end if;

  -- Slots of limited keys that the settled executions held (sql/limits.sql).
  if exists (select 1 from durably.limits) then
    v_held := durably.held_limit_keys(v_seqs);
  end if;
  delete from durably.tasks t where t.promise_seq = any(v_seqs);
  delete from durably.deadlines d where d.promise_seq = any(v_seqs);
  perform durably.wake_parked(v_held);

  -- Wake the tasks suspended on what settled here. Found by key, in steps:
  -- one statement joining callbacks, promises and tasks is planned as a scan
  -- of every task whenever the statistics say that few are suspended.
  -- A woken execution goes back to its place in the claim order (when its
  -- task was created), ahead of the backlog that became due after it first
  -- ran; woken_at records when it became runnable (sql/tasks.sql).
  with fired as (
    delete from durably.callbacks c where c.promise_id = any(v_settled) returning c.task_id
  )
  select array_agg(p.seq) into v_wake
    from durably.promises p where p.id in (select f.task_id from fired f);
  if v_wake is not null then
    with woke as (
      update durably.tasks t
         set state = 'ready', available_at = t.created_at, woken_at = now()
       where t.promise_seq = any(v_wake) and t.state = 'suspended'
      returning t.group_name, t.func
    )
    select array_agg(w.group_name), array_agg(w.func) into v_groups, v_funcs from woke w;
  end if;
  perform durably.wake_tasks(v_groups, v_funcs);

  -- Payloads stay under the 8000-byte limit: ids are grouped by every 5,900
  -- bytes of their running length, and one id is at most 2,048 bytes.
  if v_awaited is not null then
    perform pg_notify('durably_settled', string_agg(a.id, E'\n' order by a.n))
       from (select u.id, u.n, sum(octet_length(u.id) + 1) over (order by u.n) as upto
               from unnest(v_awaited) with ordinality as u(id, n)) a
      group by a.upto / 5900;
  end if;
  perform durably.notify_watchers('settled');

  return query select unnest(v_settled);
end $$;

-- Notifies durably_watch of a change that the open dashboard pages show
-- and no other channel announces (a settlement, a handoff), while someone
-- watches (durably.watch).
create or replace function durably.notify_watchers(p_what text) returns void
language sql as $$
  select pg_notify('durably_watch', p_what)
   where exists (select 1 from durably.watchers w where w.seen_at > now() - interval '1 minute')
$$;

-- Watcher p_id (an open dashboard page) is notified of every settlement
-- and handoff on durably_watch (notify_watchers) for a minute from now:
-- renewed while it watches, deleted (unwatch) when it stops.
create or replace function durably.watch(p_id uuid) returns void
language sql as $$
  insert into durably.watchers (id) values (p_id) on conflict (id) do update set seen_at = now();
  delete from durably.watchers w where w.seen_at < now() - interval '1 hour';
$$;

create or replace function durably.unwatch(p_id uuid) returns void
language sql as $$
  delete from durably.watchers w where w.id = p_id;
$$;

create or replace function durably.settle(p_id text, p_state text, p_value jsonb default null)
returns setof durably.promises
language plpgsql as $$
begin
  perform durably.settle_many(array[p_id], array[p_state], array[p_value]);
  return query select * from durably.promises p where p.id = p_id;
  if not found then
    raise exception using errcode = 'DU003', message = format('promise %L not found', p_id);
  end if;
end $$;

-- Settling from outside: external promises (ctx.promise() among them) and
-- invocations of no parent. A step, a timer or a child invocation is settled
-- by the execution it belongs to, never from outside.
create or replace function durably.settle_from_outside(p_id text, p_state text, p_value jsonb)
returns setof durably.promises
language plpgsql as $$
begin
  perform durably.check_size('the value', p_value);
  if exists (select 1 from durably.promises p
              where p.id = p_id and p.kind <> 'external' and p.parent_id is not null) then
    raise exception using errcode = 'DU002', message = format(
      'promise %s belongs to the invocation that made it: only external promises and invocations of no parent are settled from outside', p_id);
  end if;
  return query select * from durably.settle(p_id, p_state, p_value);
end $$;

create or replace function durably.resolve(p_id text, p_value jsonb default null)
returns setof durably.promises language sql as $$
  select * from durably.settle_from_outside(p_id, 'resolved', p_value)
$$;

create or replace function durably.reject(p_id text, p_error jsonb default null)
returns setof durably.promises language sql as $$
  select * from durably.settle_from_outside(p_id, 'rejected', p_error)
$$;

-- Waiting for a promise: marks it awaited while it is pending, so that its
-- settlement notifies durably_settled, and returns it as it is now. A waiter
-- LISTENs first, then calls this: a settlement committed before the mark is
-- in the row returned, one after finds the mark and notifies (the mark waits
-- for the lock of a settlement in progress). One already marked is not
-- written again.
create or replace function durably.await_promise(p_id text)
returns setof durably.promises
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
set plan_cache_mode = force_generic_plan -- planned once a connection: see durably.claim_tasks
as $$
begin
  update durably.promises p set awaited = true where p.id = p_id and p.state = 'pending' and not p.awaited;
  return query select * from durably.promises p where p.id = p_id;
  if not found then
    raise exception using errcode = 'DU003', message = format('promise %L not found', p_id);
  end if;
end $$;

-- Cancels a promise and its pending descendants (children, grandchildren...).
-- Descendants are found through their parents, and through their root for
-- those made inside a step that has not finished (no parent row yet): every
-- promise of a root's tree, or, below another promise, those whose id
-- continues its id (as the ids a context makes do).
create or replace function durably.cancel(p_id text, p_reason text default 'canceled')
returns setof durably.promises
language plpgsql as $$
declare
  v_ids  text[];
  v_root text;
begin
  if octet_length(p_reason) > 65536 then
    raise exception using errcode = 'DU002', message = format('the reason is %s bytes; the limit is 65536', octet_length(p_reason));
  end if;
  select p.root_id into v_root from durably.promises p where p.id = p_id;
  with recursive tree as (
    select p.id from durably.promises p where p.id = p_id
    union
    select c.id from durably.promises c join tree t on c.parent_id = t.id
  ), orphans as (
    select p.id from durably.promises p
     where p.root_id = v_root and p.parent_id is not null
       and (v_root = p_id or starts_with(p.id, p_id || '.'))
  )
  select coalesce(array_agg(p.id), '{}') into v_ids
    from durably.promises p
   where p.id in (select tree.id from tree union select orphans.id from orphans) and p.state = 'pending';

  perform durably.settle_many(
    v_ids,
    array_fill('rejected_canceled'::text, array[cardinality(v_ids)]),
    array_fill(jsonb_build_object('name', 'CanceledError', 'message', p_reason), array[cardinality(v_ids)]));
  return query select * from durably.settle(p_id, 'rejected_canceled', null);
end $$;

-- Settles pending promises whose timeout_at has passed: timers resolve, all
-- else is rejected_timedout. Any number of callers may run it at once. Due
-- deadlines, oldest first, settled by the sequence numbers the join found.
create or replace function durably.expire_promises(p_limit integer default 1000)
returns integer
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
set plan_cache_mode = force_generic_plan -- planned once a connection: see durably.claim_tasks
as $$
declare
  v_ids text[];
  v_seqs bigint[];
  v_states text[];
  v_values jsonb[];
begin
  if p_limit is null or p_limit not between 1 and 10000 then
    raise exception using errcode = 'DU002', message = format('invalid limit %s: 1 to 10000', p_limit);
  end if;
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
