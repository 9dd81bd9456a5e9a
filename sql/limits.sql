-- Flow control: concurrency and rate limits by key, enforced by the claims of
-- every worker (sql/tasks.sql, claim_tasks), and priorities.
--
-- A key is an invocation's concurrency key, function:<name> (every invocation
-- of that function) or group:<name> (every task of that group); a task is
-- limited by each of its keys that has a row in durably.limits.
--   concurrency  executions holding a slot at once: claimed tasks whose lease
--                has not expired. A suspended execution (durable sleep,
--                external promise) holds none. 0 pauses the key.
--   rate         at most rate_limit starts (claims) in any rate_period_ms:
--                a sliding window over durably.limit_starts.
-- A claim locks the keys of its candidates (durably.try_lock_limit_keys: a
-- key another transaction holds waits for the next claim), counts, and admits
-- in priority order. A candidate that a full concurrency limit holds back is parked
-- (ready, available_at far ahead, parked_on = the key) and no longer read by
-- claims; whatever frees a slot of the key wakes the first parked ones and
-- NOTIFYs their group. The far-ahead time is one lease from now: should a
-- wake-up be missed (a slot freed by a lease that ran out), the task is
-- looked at again then. A candidate a rate limit holds back is made due when
-- the window lets the next start in.
-- Lock order: tasks, then limit keys (by key), then parked tasks of those keys.
--
-- With no row in durably.limits none of this runs: claims and settlements
-- check that the table is empty and take the plain path.

-- A limit key is locked by a transaction-level advisory lock on its hash, not
-- by its row: a turn of a worker locks the keys of a hundred tasks twice
-- (its settlements, then its claim), and row locks would write each of them
-- to the table and the WAL. Two keys of the same hash share a lock (they only
-- wait for each other); locks are taken in the order of the hashes.
create or replace function durably.lock_limit_keys(p_keys text[]) returns void
language sql as $$
  select count(pg_advisory_xact_lock(1685418593, x.h))::integer
    from (select distinct hashtext(k.key) as h from unnest(p_keys) k(key) order by 1) x
$$;

-- Of p_keys, the ones locked here, without waiting for the others.
create or replace function durably.try_lock_limit_keys(p_keys text[]) returns text[]
language sql as $$
  select coalesce(array_agg(x.key order by x.key), '{}')
    from (select distinct k.key from unnest(p_keys) k(key)) x
   where pg_try_advisory_xact_lock(1685418593, hashtext(x.key))
$$;

-- The keys that may limit a task.
create or replace function durably.task_keys(p_key text, p_func text, p_group text) returns text[]
language sql immutable as $$
  select array['function:' || p_func, 'group:' || p_group] || case when p_key is null then '{}'::text[] else array[p_key] end
$$;

-- The limit keys whose slots the given tasks hold (claimed ones), once per
-- task: read before they stop holding them, passed to wake_parked after.
create or replace function durably.held_limit_keys(p_seqs bigint[]) returns text[]
language sql stable as $$
  -- Joined by = any (the primary key of limits, per task): a join on the unnested keys is planned as a
  -- hash of the whole limits table for every task.
  select array_agg(l.key order by l.key)
    from durably.tasks t
    join durably.limits l on l.key = any(durably.task_keys(t.concurrency_key, t.func, t.group_name))
   where t.promise_seq = any(p_seqs) and t.state = 'claimed' and l.concurrency is not null
$$;

-- Slots of p_keys (a key once per freed slot) were freed: makes that many
-- parked tasks of each key due, highest priority first, and wakes their groups.
create or replace function durably.wake_parked(p_keys text[]) returns void
language plpgsql as $$
declare
  v_groups text[];
  v_funcs  text[];
  v_wake   bigint[];
begin
  if p_keys is null then
    return;
  end if;
  -- Serializes with claims that park on these keys: a park is either seen
  -- here (it committed) or counted the freed slot (it came after).
  perform durably.lock_limit_keys(p_keys);
  select array_agg(w.promise_seq) into v_wake
    from (select k.key, count(*) as n from unnest(p_keys) k(key) group by k.key) f
    cross join lateral (select p.promise_seq from durably.tasks p
                         where p.parked_on = f.key and p.state = 'ready'
                         order by p.priority desc, p.promise_seq limit f.n
                           for update skip locked) w;
  if v_wake is null then
    return;
  end if;
  with woke as (
    update durably.tasks t set available_at = now(), parked_on = null
     where t.promise_seq = any(v_wake)
    returning t.group_name, t.func
  )
  select array_agg(w.group_name), array_agg(w.func) into v_groups, v_funcs from woke w;
  perform durably.wake_tasks(v_groups, v_funcs);
end $$;

-- The candidates of a claim when flow control is in use (a limit exists or
-- some task of the group has a priority), in the order to start them:
--   1. priority above 0, highest first (tasks_priority);
--   2. keys in turn: the due order as it stands when no key comes twice in
--      it, else the oldest due task of each concurrency key, key after
--      key, round after round, for up to half of the claim, so that a key
--      with a long backlog does not hold back one with a short backlog by
--      more than a claim or two (tasks_key: a key with nothing due costs one
--      probe). Where a connection stopped is kept in the session
--      (durably.fair_after), so that its next claim goes on from there;
--   3. priority 0 by due time (tasks_claim), then priority below 0.
-- Rows this transaction locked are not skipped by SKIP LOCKED: later steps
-- leave out what earlier ones took.
create or replace function durably.pick_by_priority(p_group text, p_functions text[], p_limit integer)
returns table (seq bigint, ready_at timestamptz, expired boolean)
language plpgsql as $$
declare
  v_taken    bigint[] := '{}';
  v_ready    timestamptz[] := '{}';
  v_expired  boolean[] := '{}';
  v_after    text := coalesce(current_setting('durably.fair_after', true), '');
  v_progress boolean := true; -- the first round may start past the last key
  v_probes   integer := 0;
  v_turns    integer;
  v_due         bigint[];
  v_due_ready   timestamptz[];
  v_due_expired boolean[];
  v_in_turn     boolean := false;
  r          record;
begin
  select coalesce(array_agg(k.promise_seq), '{}'), coalesce(array_agg(k.available_at), '{}'), coalesce(array_agg(k.state = 'claimed'), '{}')
    into v_taken, v_ready, v_expired
    from (select t.promise_seq, t.available_at, t.state from durably.tasks t
           where t.group_name = p_group and t.priority > 0 and t.available_at <= now() and t.func = any(p_functions)
           order by t.priority desc, t.available_at limit p_limit
             for update skip locked) k;

  -- Due order as it stands when no concurrency key comes twice in it: it
  -- takes from its keys in turn already (many keys with short backlogs), and
  -- the turns below are not needed. Rows it locked and does not return stay
  -- locked until the claim ends; the steps below take them again.
  if cardinality(v_taken) < p_limit then
    select coalesce(array_agg(k.promise_seq order by k.available_at, k.promise_seq), '{}'),
           coalesce(array_agg(k.available_at order by k.available_at, k.promise_seq), '{}'),
           coalesce(array_agg(k.state = 'claimed' order by k.available_at, k.promise_seq), '{}'),
           count(k.concurrency_key) = count(distinct k.concurrency_key)
      into v_due, v_due_ready, v_due_expired, v_in_turn
      from (select t.promise_seq, t.available_at, t.state, t.concurrency_key from durably.tasks t
             where t.group_name = p_group and t.available_at <= now() and t.func = any(p_functions) and t.priority = 0
             order by t.available_at limit p_limit - cardinality(v_taken)
               for update skip locked) k;
    if v_in_turn then
      v_taken := v_taken || v_due;
      v_ready := v_ready || v_due_ready;
      v_expired := v_expired || v_due_expired;
    end if;
  end if;

  v_turns := case when v_in_turn then 0 else (p_limit - cardinality(v_taken) + 1) / 2 end;
  while v_turns > 0 and v_probes < 2 * p_limit loop
    select t.concurrency_key, t.available_at into r
      from durably.tasks t where t.concurrency_key > v_after
     order by t.concurrency_key, t.available_at limit 1;
    if not found then
      -- past the last key: round again, unless the last round took nothing
      exit when v_after = '' or not v_progress;
      v_after := '';
      v_progress := false;
      continue;
    end if;
    v_probes := v_probes + 1;
    v_after := r.concurrency_key;
    continue when r.available_at > now(); -- nothing of this key is due
    select t.promise_seq, t.available_at, t.state = 'claimed' as expired into r
      from durably.tasks t
     where t.concurrency_key = v_after and t.available_at <= now() and t.group_name = p_group
       and t.priority = 0 and t.func = any(p_functions) and t.promise_seq <> all (v_taken)
     order by t.available_at limit 1
       for update skip locked;
    continue when not found;
    v_taken := v_taken || r.promise_seq;
    v_ready := v_ready || r.available_at;
    v_expired := v_expired || r.expired;
    v_turns := v_turns - 1;
    v_progress := true;
  end loop;
  perform set_config('durably.fair_after', v_after, false);

  if cardinality(v_taken) < p_limit and not v_in_turn then
    select v_taken || coalesce(array_agg(k.promise_seq), '{}'), v_ready || coalesce(array_agg(k.available_at), '{}'),
           v_expired || coalesce(array_agg(k.state = 'claimed'), '{}')
      into v_taken, v_ready, v_expired
      from (select t.promise_seq, t.available_at, t.state from durably.tasks t
             where t.group_name = p_group and t.available_at <= now() and t.func = any(p_functions) and t.priority = 0
               and t.promise_seq <> all (v_taken)
             order by t.available_at limit p_limit - cardinality(v_taken)
               for update skip locked) k;
  end if;
  if cardinality(v_taken) < p_limit then
    select v_taken || coalesce(array_agg(k.promise_seq), '{}'), v_ready || coalesce(array_agg(k.available_at), '{}'),
           v_expired || coalesce(array_agg(k.state = 'claimed'), '{}')
      into v_taken, v_ready, v_expired
      from (select t.promise_seq, t.available_at, t.state from durably.tasks t
             where t.group_name = p_group and t.priority < 0 and t.available_at <= now() and t.func = any(p_functions)
             order by t.priority desc, t.available_at limit p_limit - cardinality(v_taken)
               for update skip locked) k;
  end if;
  return query select * from unnest(v_taken, v_ready, v_expired);
end $$;

-- Of the candidates a claim locked (p_seqs, in the order to start them), the
-- ones the limits let start now; the others are parked or left for the next
-- claim. Records the starts of rate-limited keys.
--
-- Decided for all candidates at once, in one statement: the n-th candidate of
-- a key (in the claim's order) fits when n is within the key's room, and a
-- candidate starts when it fits every one of its keys. One held back by a
-- key still counts in its other keys, so a claim may admit fewer than would
-- fit (the next claim takes them), never more.
create or replace function durably.admit(p_seqs bigint[], p_group text, p_lease_ms integer) returns bigint[]
language plpgsql as $$
declare
  v_keys     text[];
  v_locked   text[];
  v_now      timestamptz;
  v_seqs     bigint[];
  v_verdicts text[];
  v_on       text[];
  v_wake     timestamptz[];
  v_full     text[];
  v_rated    text[];
begin
  select array_agg(distinct l.key) into v_keys
    from durably.tasks t
    join durably.limits l on l.key = any(durably.task_keys(t.concurrency_key, t.func, t.group_name))
   where t.promise_seq = any(p_seqs);
  if v_keys is null then
    return p_seqs;
  end if;
  -- Locked here, then counted in statements of their own (fresh snapshots:
  -- what a claim or release that held the lock before committed is seen).
  v_locked := durably.try_lock_limit_keys(v_keys);
  -- Rate windows on the clock, not the transaction's start: a claim may have
  -- waited (its settlements go first) before it took these keys, and the
  -- claims of a key follow each other under its lock.
  v_now := clock_timestamp();
  delete from durably.limit_starts s
   using durably.limits l
   where l.key = any(v_locked) and l.rate_limit is not null
     and s.key = l.key and s.started_at <= v_now - l.rate_period_ms * interval '1 millisecond';

  with taken as (
    -- slots taken: one pass over the claimed tasks (as many as the fleet runs at once)
    select k.key, count(*) as n
      from durably.tasks t cross join unnest(durably.task_keys(t.concurrency_key, t.func, t.group_name)) k(key)
     where t.worker_id is not null and t.lease_until > now() and k.key = any(v_locked)
     group by k.key
  ), room as (
    -- per locked key: slots left, starts left in the window and when the
    -- window lets the next one in (null: no such limit)
    select l.key, l.concurrency - coalesce(c.n, 0) as slots, l.rate_limit - s.n as starts,
           coalesce(s.oldest, v_now) + l.rate_period_ms * interval '1 millisecond' as next_start
      from durably.limits l
      left join taken c on c.key = l.key
      left join lateral (select count(*) as n, min(s.started_at) as oldest
                           from durably.limit_starts s where s.key = l.key and l.rate_limit is not null) s on true
     where l.key = any(v_locked)
  ), ranked as (
    select u.seq, u.n, k.key, row_number() over (partition by k.key order by u.n) as rank
      from durably.tasks t
      join unnest(p_seqs) with ordinality u(seq, n) on u.seq = t.promise_seq
     cross join unnest(durably.task_keys(t.concurrency_key, t.func, t.group_name)) k(key)
     where t.promise_seq = any(p_seqs) and k.key = any(v_keys)
  ), verdicts as (
    select c.seq, c.n,
           case when bool_or(r.key is null) then 'busy' -- another claim holds one of its keys
                when bool_or(c.rank > r.slots) then 'full'
                when bool_or(c.rank > r.starts) then 'rate'
                else 'start' end as verdict,
           min(c.key) filter (where c.rank > r.slots) as full_key,
           max(r.next_start) filter (where c.rank > r.starts) as wake_at
      from ranked c left join room r on r.key = c.key
     group by c.seq, c.n
  ), started as (
    select c.key, count(*) as n from ranked c join verdicts v on v.seq = c.seq and v.verdict = 'start' group by c.key
  )
  -- A key is full when what starts here takes its last slot: what it held
  -- back is parked on it. Held back by a key with a slot left (counted behind
  -- a candidate another key held back), a candidate stays due for the next claim.
  select array_agg(v.seq order by v.n), array_agg(v.verdict order by v.n),
         array_agg(v.full_key order by v.n), array_agg(v.wake_at order by v.n),
         array_agg(distinct v.full_key) filter (where v.verdict = 'full' and r.slots - coalesce(s.n, 0) <= 0)
    into v_seqs, v_verdicts, v_on, v_wake, v_full
    from verdicts v
    left join room r on r.key = v.full_key
    left join started s on s.key = v.full_key;

  v_rated := array(select l.key from durably.limits l where l.key = any(v_locked) and l.rate_limit is not null);
  if cardinality(v_rated) > 0 then
    insert into durably.limit_starts (key, started_at)
    select k.key, v_now
      from unnest(v_seqs, v_verdicts) v(seq, verdict)
      join durably.tasks t on t.promise_seq = v.seq
     cross join unnest(durably.task_keys(t.concurrency_key, t.func, t.group_name)) k(key)
     where v.verdict = 'start' and k.key = any(v_rated);
  end if;

  -- Held back: parked on a full key, or due when the rate window lets it in.
  -- (One that a lease expiry brought here counts that attempt.)
  update durably.tasks t
     set state = 'ready', worker_id = null,
         parked_on = case when v.verdict = 'full' then v.full_key end,
         available_at = case when v.verdict = 'full' then now() + p_lease_ms * interval '1 millisecond' else v.wake_at end,
         attempt = t.attempt + (t.state = 'claimed')::integer, replay = t.replay or t.state = 'claimed'
    from unnest(v_seqs, v_verdicts, v_on, v_wake) v(seq, verdict, full_key, wake_at)
   where t.promise_seq = v.seq
     and (v.verdict = 'rate' or (v.verdict = 'full' and v.full_key = any(v_full)));

  -- A full key's other due tasks of this group are parked with it, so that the
  -- next claims read past them at once rather than a batch at a time.
  -- Each kind of key read by its index: concurrency keys by tasks_key, the
  -- others by the group's tasks_claim.
  if cardinality(v_full) > 0 then
    update durably.tasks t
       set parked_on = x.key, available_at = now() + p_lease_ms * interval '1 millisecond'
      from (select f.key, p.promise_seq
              from unnest(v_full) f(key)
             cross join lateral (select p.promise_seq from durably.tasks p
                                  where p.concurrency_key = f.key and p.group_name = p_group and p.state = 'ready'
                                    and p.available_at <= now() and p.parked_on is null
                                    for update skip locked) p
             where f.key not like 'function:%' and f.key not like 'group:%'
            union all
            select f.key, p.promise_seq
              from unnest(v_full) f(key)
             cross join lateral (select p.promise_seq from durably.tasks p
                                  where p.group_name = p_group and p.available_at <= now()
                                    and p.state = 'ready' and p.parked_on is null
                                    -- a full group key is this group's: all of it waits
                                    and (f.key like 'group:%' or p.func = substr(f.key, 10))
                                    for update skip locked) p
             where f.key like 'function:%' or f.key like 'group:%') x
     where t.promise_seq = x.promise_seq;
  end if;
  -- In the claim's order; candidates with no limited key start too.
  return array(select u.seq from unnest(p_seqs) with ordinality u(seq, n)
                 left join unnest(v_seqs, v_verdicts) v(seq, verdict) on v.seq = u.seq
                where v.verdict is null or v.verdict = 'start'
                order by u.n);
end $$;

-- Bad input is refused with DU002 and nothing written.
create or replace function durably.check_limit_key(p_key text) returns void
language plpgsql immutable as $$
begin
  if p_key is null or p_key = '' or length(p_key) > 512 then
    raise exception using errcode = 'DU002',
      message = format('invalid limit key %s: 1 to 512 characters', coalesce(quote_literal(left(p_key, 80)), 'NULL'));
  end if;
end $$;

-- Sets the limits of a key (null: no such limit), in force from the next
-- claim. Raising or removing a limit wakes the tasks parked on it.
create or replace function durably.set_limit(p_key text, p_concurrency integer, p_rate_limit integer default null,
                                             p_rate_period_ms integer default null)
returns void
language plpgsql as $$
begin
  perform durably.check_limit_key(p_key);
  if p_concurrency < 0 then
    raise exception using errcode = 'DU002', message = format('invalid concurrency %s for %s: 0 (paused) or more', p_concurrency, p_key);
  end if;
  if (p_rate_limit is null) <> (p_rate_period_ms is null) then
    raise exception using errcode = 'DU002', message = format('a rate for %s needs both a limit and a period', p_key);
  end if;
  if p_rate_limit < 0 then
    raise exception using errcode = 'DU002', message = format('invalid rate limit %s for %s: 0 or more starts', p_rate_limit, p_key);
  end if;
  if p_rate_period_ms <= 0 then
    raise exception using errcode = 'DU002', message = format('invalid rate period %s ms for %s: more than 0', p_rate_period_ms, p_key);
  end if;
  -- Once the claims that hold the key (and may park on the old limit) have
  -- committed: their parked tasks are woken below. A new key has no claim
  -- counting it yet, and a transaction that creates many takes no locks.
  if exists (select 1 from durably.limits l where l.key = p_key) then
    perform durably.lock_limit_keys(array[p_key]);
  end if;
  insert into durably.limits as l (key, concurrency, rate_limit, rate_period_ms)
  values (p_key, p_concurrency, p_rate_limit, p_rate_period_ms)
  on conflict (key) do update
    set concurrency = excluded.concurrency, rate_limit = excluded.rate_limit,
        rate_period_ms = excluded.rate_period_ms, updated_at = now();
  perform durably.wake_all_parked(p_key);
end $$;

create or replace function durably.delete_limit(p_key text) returns boolean
language plpgsql as $$
begin
  perform durably.check_limit_key(p_key);
  perform durably.lock_limit_keys(array[p_key]);
  perform durably.wake_all_parked(p_key);
  delete from durably.limit_starts s where s.key = p_key;
  delete from durably.limits l where l.key = p_key;
  return found;
end $$;

-- Every task parked on p_key is due again (the claims park again what the
-- limit still holds back).
create or replace function durably.wake_all_parked(p_key text) returns void
language plpgsql as $$
declare
  v_groups text[];
  v_funcs  text[];
begin
  with woke as (
    update durably.tasks t set available_at = now(), parked_on = null
     where t.parked_on = p_key and t.state = 'ready'
    returning t.group_name, t.func
  )
  select array_agg(w.group_name), array_agg(w.func) into v_groups, v_funcs from woke w;
  perform durably.wake_tasks(v_groups, v_funcs);
end $$;

-- The limits with what they count now: running (claimed under an unexpired
-- lease), parked (waiting for a slot) and started_in_window (rate).
create or replace view durably.limit_list as
select l.key, l.concurrency, l.rate_limit, l.rate_period_ms, l.updated_at,
       -- the keys spelled out (not task_keys): durably_app reads this view and may not call that function
       (select count(*) from durably.tasks t
         where t.worker_id is not null and t.lease_until > now()
           and l.key in (t.concurrency_key, 'function:' || t.func, 'group:' || t.group_name)) as running,
       (select count(*) from durably.tasks t where t.parked_on = l.key) as parked,
       (select count(*) from durably.limit_starts s
         where s.key = l.key and s.started_at > now() - l.rate_period_ms * interval '1 millisecond') as started_in_window
  from durably.limits l;
