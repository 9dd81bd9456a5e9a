-- Tasks and claiming: leased dispatch of function invocations.
--
-- A task is the dispatch of a function invocation: "some worker of group G must
-- (re)run the function of promise P". One task per promise at most, keyed by
-- the promise's sequence number; it lives only while the promise is pending
-- and is deleted when the promise settles (durably.settle_many).
--   ready     available_at = when it may run
--   claimed   available_at = when a claim looks at it again; lease_until = the
--             lease expiry (renewed by heartbeats); worker_id set; handed =
--             claimed by a handoff (durably.hand_off) that its worker may not
--             have received: its lease runs while the worker is alive, until
--             the worker's first heartbeat that holds it (durably.lease_runs)
--   suspended available_at = timer wake-up, or 'infinity' while it waits on
--             other promises (see durably.callbacks)
-- Every state uses available_at the same way, so one index answers "what can be
-- claimed now": due ready tasks, expired leases and due timers alike.
-- A heartbeat renews only lease_until, which no index covers: a HOT update,
-- however many tasks a worker holds. A claim sets available_at to the lease
-- expiry; one that meets a task whose lease still runs past it moves
-- available_at to lease_until and leaves it (once per lease period of an
-- execution that runs longer than its lease).
-- A resumed execution (what it awaited settled, its timer came due) goes back
-- to its place in the claim order, available_at = when its task was created:
-- ahead of the work that became due after it first ran (within its priority:
-- durably.pick_by_priority takes higher priorities first). woken_at is when
-- it became runnable again (durably.runnable_since).
--
-- Lock order: promises before tasks, rows of one table by sequence number.
-- Every procedure that locks both waits in this order (settle, suspend,
-- cancel, prune); a claim, which holds task locks, takes promise locks only
-- with SKIP LOCKED.

-- The delay before the next attempt after attempt p_attempt failed, by a
-- retry policy (the same as the TypeScript client's retryDelay, which a test
-- compares): null when no attempt is left. Missing fields take the defaults
-- of the exponential policy: 1 s doubling to 60 s, jittered in the upper half,
-- 5 attempts.
create or replace function durably.retry_delay_ms(p_policy jsonb, p_attempt integer) returns bigint
language plpgsql volatile as $$
declare
  v_kind text := coalesce(p_policy->>'kind', 'exponential');
  v_base float8;
begin
  if v_kind = 'never' or p_attempt >= coalesce((p_policy->>'maxAttempts')::integer, 5) then
    return null;
  end if;
  case v_kind
    when 'constant' then return coalesce((p_policy->>'delayMs')::bigint, 1000);
    when 'linear' then return coalesce((p_policy->>'delayMs')::bigint, 1000) * p_attempt;
    else
      v_base := least(coalesce((p_policy->>'initialMs')::float8, 1000) * coalesce((p_policy->>'factor')::float8, 2) ^ (p_attempt - 1),
                      coalesce((p_policy->>'maxMs')::float8, 60000));
      if (p_policy->>'jitter')::boolean is false then
        return round(v_base);
      end if;
      return round(v_base / 2 + random() * v_base / 2);
  end case;
end $$;

-- Claims up to p_limit runnable tasks of a group under a lease: only tasks of
-- functions the claiming worker registered (durably.workers.functions), so a
-- worker never takes a task it cannot run (during a rolling deploy, say); a
-- task no live worker of its group can run waits, ready, for one that can
-- (task_list.waiting_for_worker) or for its promise's timeout.
--
-- A task found still claimed has an expired lease: its worker crashed,
-- stalled or was killed while running it, and that attempt is over. Its
-- retry policy (the invocation's, else the one its function was registered
-- with on the claiming worker, else the default) decides, as for an error the
-- function returned: after the last attempt the promise is rejected
-- (LeaseExpiredError: the lease expired N times); otherwise the task waits
-- out the policy's delay, ready, and is claimed after it. So a function that
-- takes its worker down (OOM, process.exit, an endless loop) runs at most
-- its attempts, and a worker is not brought down again at once.
--
-- History (the promise's children) comes along when there is some, as json
-- text: a replay reads all of it at every resume, and json_agg builds it
-- several times faster than jsonb_agg (1,000 children: ~3 ms against ~15). The ids
-- are picked first, and then only those rows are touched, by primary key:
-- one statement joining the pick to both tables gets a generic plan that
-- hash-joins whole tables (a claim would read every retained promise).
-- Picks, rewrites and joins by sequence number, and returns it for the
-- settlement. Also returned, for traces and metrics: the invocation's trace
-- context, how long the task had been runnable (ready_seconds: since it was
-- due, woken, or its lease ran out). Expired leases are counted in
-- durably.lease_expirations.
-- The return type changed: dropped first (settle_and_claim returns the same).
drop function if exists durably.settle_and_claim(uuid, text, integer, integer, text[], text[], jsonb[], bigint[]);
drop function if exists durably.claim_tasks(uuid, text, integer, integer);
create or replace function durably.claim_tasks(p_worker uuid, p_group text, p_limit integer, p_lease_ms integer)
returns table (id text, func text, args jsonb, state text, timeout_at timestamptz, root_id text,
               attempt integer, retry jsonb, history json, seq bigint,
               trace_context jsonb, ready_seconds double precision)
language plpgsql
-- The pick must walk tasks_claim in order and stop at p_limit. Without
-- statistics (a new table, autovacuum off) the function filter makes the
-- planner expect one row and read every due task into a bitmap and a sort.
set enable_bitmapscan = off
-- Every statement of the hot path finds its rows by key (sequence number,
-- id, or an index in claim order). PL/pgSQL caches a connection's plans: one
-- made while the tables were nearly empty (a new install before its first
-- ANALYZE, or with autovacuum off) reads whole tables once they have grown,
-- and is kept. Under a steady stream of invocations into a new database a
-- claim of 100 took 12 ms by sequential scans instead of 1, and the worker
-- fell behind a quarter of its capacity. Planned without sequential scans,
-- the functions of the hot path are right for any table size. A small table
-- with no index to use is still read whole, at a cost the planner then puts
-- far above jit_above_cost: without jit = off every such call would compile
-- its plan (33 ms).
set enable_seqscan = off
set jit = off
-- Planned once a connection. PL/pgSQL keeps planning a statement at every
-- call while its generic plan is costed above the custom plans made so far,
-- and a generic `= any($1)` is costed for more elements than a claim or a
-- settlement usually carries: it never switched, and planning took 0.3 ms of
-- an idle claim's 1.2 and 0.4 of a settlement's. The statements of the hot
-- path are written to be right under a generic plan (the tests run them so).
set plan_cache_mode = force_generic_plan
as $$
declare
  v_functions text[];
  v_policies  jsonb;
  v_seqs      bigint[];
  v_ready     timestamptz[];
  v_expired   boolean[];
  v_claim     bigint[];
  v_limited   boolean;
  v_got       integer;
begin
  select w.functions, w.retry into v_functions, v_policies from durably.workers w where w.id = p_worker;
  -- Flow control (sql/limits.sql) only when a limit, a priority or a
  -- concurrency key exists: otherwise three probes of empty relations are all
  -- it costs.
  v_limited := exists (select 1 from durably.limits);
  select array_agg(k.seq order by k.n), array_agg(k.ready_at order by k.n), array_agg(k.expired order by k.n)
    into v_seqs, v_ready, v_expired
    from durably.pick_tasks(p_group, v_functions, p_limit,
                            v_limited or exists (select 1 from durably.tasks t where t.group_name = p_group and t.priority <> 0)
                                      or exists (select 1 from durably.tasks t where t.group_name = p_group and t.concurrency_key is not null))
         with ordinality k(seq, ready_at, expired, n);
  if v_seqs is null then
    perform durably.record_claim(p_worker, p_group, p_limit, 0);
    return;
  end if;
  v_claim := case when true = any(v_expired) then durably.lease_expired(v_seqs, v_expired, v_policies) else v_seqs end;
  if v_limited then
    v_claim := durably.admit(v_claim, p_group, p_lease_ms);
  end if;
  -- Some picked tasks are not claimed now (settled or put back by the
  -- retry policy, held back by a limit): the picked arrays keep only those
  -- claimed, in their order.
  if v_claim is distinct from v_seqs then
    select array_agg(u.seq order by u.n), array_agg(u.ready_at order by u.n) into v_seqs, v_ready
      from unnest(v_seqs, v_ready) with ordinality u(seq, ready_at, n)
     where u.seq = any(v_claim);
  end if;
  -- Joined to the picked arrays by unnest: each task and promise is found
  -- by its key, and the order picked (by priority when there are some) comes
  -- with it. Looking each row's place up in the arrays (array_position) was
  -- quadratic: 0.8 ms of a claim of 250.
  return query
  with claimed as (
    update durably.tasks t
       set state = 'claimed', worker_id = p_worker, claimed_at = now(), parked_on = null, handed = false,
           available_at = now() + p_lease_ms * interval '1 millisecond',
           lease_until = now() + p_lease_ms * interval '1 millisecond',
           attempt = t.attempt + (t.state = 'claimed')::integer,
           replay = t.replay or t.state = 'claimed'
      from unnest(v_seqs, v_ready) with ordinality u(seq, ready_at, n)
     where t.promise_seq = u.seq
    returning t.promise_seq, t.attempt, t.retry, t.replay, u.ready_at, u.n
  )
  select p.id, p.func, p.args, p.state, p.timeout_at, p.root_id, c.attempt, c.retry,
         case when c.replay then
           (select coalesce(json_agg(json_build_object(
                     'id', h.id, 'kind', h.kind, 'func', h.func, 'state', h.state,
                     'value', h.value, 'timeout_at', h.timeout_at)), '[]')
              from durably.promises h where h.parent_id = p.id)
         end,
         p.seq, p.trace_context, extract(epoch from now() - c.ready_at)::double precision
    from claimed c join durably.promises p on p.seq = c.promise_seq
   order by c.n;
  get diagnostics v_got = row_count;
  perform durably.record_claim(p_worker, p_group, p_limit, v_got);
end $$;

-- Since when a task has been runnable (a claim's ready_seconds): a claimed
-- one since its lease ran out, a resumed one since it was woken, any other
-- since it was due. A woken_at older than available_at is from an earlier
-- wake-up: every later return to ready sets available_at to a later time.
create or replace function durably.runnable_since(p_state text, p_available_at timestamptz,
                                                  p_woken_at timestamptz, p_lease_until timestamptz)
returns timestamptz
language sql immutable as $$
  select case when p_state = 'claimed' then p_lease_until else greatest(p_available_at, p_woken_at) end
$$;

-- Whether the lease on a claimed task still runs: until lease_until, or, for
-- a handed task (see the top of this file), while its worker is alive (it
-- heartbeats, has not stopped). The transaction that handed it may have
-- committed after lease_until: the worker starts it on receipt all the same.
create or replace function durably.lease_runs(p_lease_until timestamptz, p_handed boolean, p_worker uuid)
returns boolean
language sql stable as $$
  select p_lease_until > now()
      or case when p_handed then exists (
           select 1 from durably.workers w
            where w.id = p_worker and w.stopped_at is null
              and w.heartbeat_at > now() - w.lease_ms * interval '1 millisecond')
         else false end
$$;

-- The candidates of a claim, locked, in the order to start them: by
-- priority (durably.pick_by_priority) when some task of the group has one
-- or a limit exists, else by available_at. Due timers of the group are made
-- runnable first, at their place in the claim order. A claimed task whose
-- available_at has passed while its lease still runs is no candidate: its
-- available_at moves to its lease expiry, and the pick goes on past it.
create or replace function durably.pick_tasks(p_group text, p_functions text[], p_limit integer, p_prioritized boolean)
returns table (seq bigint, ready_at timestamptz, expired boolean)
language plpgsql
-- (run by claim_tasks, under its settings)
as $$
declare
  v_seqs    bigint[];
  v_ready   timestamptz[];
  v_expired boolean[];
  v_held    bigint[];
begin
  -- probed first: an update costs more to start than an index probe
  if exists (select 1 from durably.tasks s where s.group_name = p_group and s.state = 'suspended' and s.available_at <= now()) then
    update durably.tasks t
       set state = 'ready', available_at = t.created_at, woken_at = t.available_at
     where t.promise_seq in (select s.promise_seq from durably.tasks s
                              where s.group_name = p_group and s.state = 'suspended' and s.available_at <= now()
                              order by s.available_at limit p_limit
                                for update skip locked);
  end if;
  -- Picked again after held ones moved: the rows this transaction locked
  -- already are picked again (SKIP LOCKED skips only others' locks), in the
  -- same order, and the pick goes further.
  loop
    select array_agg(k.seq order by k.n) filter (where not k.held),
           array_agg(k.ready_at order by k.n) filter (where not k.held),
           array_agg(k.expired order by k.n) filter (where not k.held),
           array_agg(k.seq) filter (where k.held)
      into v_seqs, v_ready, v_expired, v_held
      from durably.pick_candidates(p_group, p_functions, p_limit, p_prioritized)
           with ordinality k(seq, ready_at, expired, held, n);
    exit when v_held is null;
    -- (a handed task whose lease ran out: when its worker would be gone without another heartbeat)
    update durably.tasks t
       set available_at = case when t.lease_until > now() then t.lease_until
                               else (select w.heartbeat_at + w.lease_ms * interval '1 millisecond'
                                       from durably.workers w where w.id = t.worker_id) end
     where t.promise_seq = any(v_held);
  end loop;
  return query select * from unnest(v_seqs, v_ready, v_expired);
end $$;

-- One pass of the pick: up to p_limit tasks, locked; held = claimed under a
-- lease that still runs.
create or replace function durably.pick_candidates(p_group text, p_functions text[], p_limit integer, p_prioritized boolean)
returns table (seq bigint, ready_at timestamptz, expired boolean, held boolean)
language plpgsql as $$
begin
  if p_prioritized then
    return query
    select k.seq, durably.runnable_since(t.state, t.available_at, t.woken_at, t.lease_until),
           t.state = 'claimed' and not durably.lease_runs(t.lease_until, t.handed, t.worker_id),
           t.state = 'claimed' and durably.lease_runs(t.lease_until, t.handed, t.worker_id)
      from durably.pick_by_priority(p_group, p_functions, p_limit) with ordinality k(seq, ready_at, expired, n)
      join durably.tasks t on t.promise_seq = k.seq
     order by k.n;
  else
    return query
    select t.promise_seq, durably.runnable_since(t.state, t.available_at, t.woken_at, t.lease_until),
           t.state = 'claimed' and not durably.lease_runs(t.lease_until, t.handed, t.worker_id),
           t.state = 'claimed' and durably.lease_runs(t.lease_until, t.handed, t.worker_id)
      from durably.tasks t
     where t.group_name = p_group and t.available_at <= now() and t.func = any(p_functions)
     order by t.available_at
     limit p_limit
       for update skip locked;
  end if;
end $$;

-- Applies the retry policy to the picked tasks whose lease expired (their
-- rows are locked by the claim); returns the picked sequence numbers to claim
-- now. The promises of exhausted tasks are settled rejected: locked with SKIP
-- LOCKED, as a claim holds task locks, so a settlement in progress (which
-- locks the promise, then the task) is never waited for; such a task is left
-- to that settlement.
create or replace function durably.lease_expired(p_seqs bigint[], p_expired boolean[], p_policies jsonb)
returns bigint[]
language plpgsql as $$
declare
  v_seqs      bigint[];
  v_ids       text[];
  v_attempts  integer[];
  v_delays    bigint[];
  v_exhausted bigint[];
  v_errors    jsonb[];
  v_rejected  text[];
  v_held      text[];
begin
  select array_agg(t.promise_seq), array_agg(t.promise_id), array_agg(t.attempt),
         array_agg(durably.retry_delay_ms(coalesce(t.retry, p_policies->t.func, '{}'), t.attempt))
    into v_seqs, v_ids, v_attempts, v_delays
    from unnest(p_seqs, p_expired) k(seq, expired) join durably.tasks t on t.promise_seq = k.seq
   where k.expired;
  insert into durably.lease_expirations as c (group_name, total)
  select t.group_name, count(*) from durably.tasks t where t.promise_seq = any(v_seqs) group by t.group_name
  on conflict (group_name) do update set total = c.total + excluded.total;

  with expired as (
    select * from unnest(v_seqs, v_ids, v_attempts, v_delays) e(seq, id, attempt, delay_ms)
  ), exhausted as (
    select p.seq from durably.promises p
     where p.seq in (select e.seq from expired e where e.delay_ms is null)
     order by p.seq for update skip locked
  )
  select array_agg(e.seq), array_agg(e.id),
         array_agg(jsonb_build_object('name', 'LeaseExpiredError', 'attempt', e.attempt, 'message', format(
           'the lease on %s expired %s times: its worker stopped renewing it (crashed, was killed or stalled) while running it',
           e.id, e.attempt)))
    into v_exhausted, v_rejected, v_errors
    from exhausted x join expired e on e.seq = x.seq;
  if v_exhausted is not null then
    perform durably.settle_many(v_rejected, array_fill('rejected'::text, array[cardinality(v_rejected)]), v_errors, v_exhausted);
  end if;

  if exists (select 1 from durably.limits) then
    v_held := durably.held_limit_keys(array(select e.seq from unnest(v_seqs, v_delays) e(seq, delay_ms) where e.delay_ms > 0));
  end if;
  update durably.tasks t
     set state = 'ready', worker_id = null, replay = true, attempt = t.attempt + 1,
         available_at = now() + e.delay_ms * interval '1 millisecond',
         last_error = jsonb_build_object('name', 'LeaseExpiredError', 'attempt', e.attempt, 'message',
           format('the lease on %s expired (attempt %s); retried after %s ms', e.id, e.attempt, e.delay_ms))
    from unnest(v_seqs, v_ids, v_attempts, v_delays) e(seq, id, attempt, delay_ms)
   where t.promise_seq = e.seq and e.delay_ms > 0;
  perform durably.wake_parked(v_held);

  -- Claimed now: the tasks that were not expired, and the expired ones to retry at once.
  return array(select s from unnest(p_seqs) s
                where s not in (select e.seq from unnest(v_seqs, v_delays) e(seq, delay_ms)
                                 where e.delay_ms is null or e.delay_ms > 0));
end $$;

-- A busy worker's turn in one transaction: writes the outcomes of the
-- executions that finished and claims the next tasks. One commit instead of
-- two; settle_many and claim_tasks as they are.
create or replace function durably.settle_and_claim(
  p_worker uuid, p_group text, p_limit integer, p_lease_ms integer,
  p_ids text[], p_states text[], p_values jsonb[], p_seqs bigint[]
) returns table (id text, func text, args jsonb, state text, timeout_at timestamptz, root_id text,
                 attempt integer, retry jsonb, history json, seq bigint,
                 trace_context jsonb, ready_seconds double precision)
language plpgsql
-- (settle_many and claim_tasks carry their planner settings)
as $$
begin
  perform durably.settle_many(p_ids, p_states, p_values, p_seqs);
  return query select * from durably.claim_tasks(p_worker, p_group, p_limit, p_lease_ms);
end $$;

-- Puts a failed execution back with a delay; the attempt counter grows.
create or replace function durably.retry_task(p_worker uuid, p_id text, p_delay_ms bigint, p_error jsonb)
returns boolean
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
set plan_cache_mode = force_generic_plan -- planned once a connection: see durably.claim_tasks
as $$
declare
  v_group text;
  v_func  text;
  v_held  text[];
begin
  if exists (select 1 from durably.limits) then
    v_held := durably.held_limit_keys(array(select t.promise_seq from durably.tasks t
                                             where t.promise_id = p_id and t.worker_id = p_worker));
  end if;
  update durably.tasks t
     set state = 'ready', worker_id = null, replay = true, attempt = t.attempt + 1, last_error = p_error,
         available_at = now() + p_delay_ms * interval '1 millisecond'
   where t.promise_id = p_id and t.worker_id = p_worker and t.state = 'claimed'
  returning t.group_name, t.func into v_group, v_func;
  if not found then
    return false;
  end if;
  perform durably.wake_parked(v_held);
  -- a delayed retry is found by the worker's timer or poll; only an immediate one wakes the group
  if p_delay_ms <= 0 then
    perform durably.wake_group(v_group, 1, array[v_func]);
  end if;
  return true;
end $$;

-- Suspends an execution until one of p_awaits settles or p_wake_at passes.
-- Returns 'suspended'; 'ready' when an awaited promise settled already (the
-- caller keeps its lease and goes on); 'lost' when the caller's lease is gone.
create or replace function durably.suspend_task(p_worker uuid, p_id text, p_awaits text[], p_wake_at timestamptz)
returns text
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
set plan_cache_mode = force_generic_plan -- planned once a connection: see durably.claim_tasks
as $$
declare
  v_held text[];
begin
  -- Share-lock the awaited promises first (lock order: promises, then tasks):
  -- a concurrent settle either committed before (seen below) or waits for us
  -- and then finds our callbacks.
  perform 1 from durably.promises p where p.id = any(p_awaits) order by p.seq for share;
  if exists (select 1 from durably.promises p where p.id = any(p_awaits) and p.state <> 'pending') then
    return 'ready';
  end if;

  -- A suspended execution holds no slot of its limits (sql/limits.sql).
  if exists (select 1 from durably.limits) then
    v_held := durably.held_limit_keys(array(select t.promise_seq from durably.tasks t
                                             where t.promise_id = p_id and t.worker_id = p_worker));
  end if;
  update durably.tasks t
     set state = 'suspended', worker_id = null, replay = true,
         available_at = coalesce(p_wake_at, 'infinity')
   where t.promise_id = p_id and t.worker_id = p_worker and t.state = 'claimed';
  if not found then
    return 'lost';
  end if;
  perform durably.wake_parked(v_held);

  insert into durably.callbacks (promise_id, task_id)
  select a, p_id from unnest(p_awaits) a
  on conflict do nothing;
  return 'suspended';
end $$;
