-- Workers: registration, the heartbeat that renews a worker's leases, and
-- graceful shutdown. Workers are recorded (durably.workers) so operators see
-- them (the durably.worker_status view).

-- A worker joins its group with the functions it runs (claims take only
-- their tasks) and the retry policy each was registered with, by name
-- (claims apply it when a lease expires; a function without one has the
-- default policy). p_named_wakes: the worker reads the names in a wake-up
-- (see durably.wake_group), so it may be recorded idle; p_handoffs: it
-- listens on durably_worker_<id> and starts what it is handed there (see
-- durably.hand_off).
drop function if exists durably.register_worker(uuid, text, text, integer, text[], integer);
drop function if exists durably.register_worker(uuid, text, text, integer, text[], integer, jsonb);
drop function if exists durably.register_worker(uuid, text, text, integer, text[], integer, jsonb, boolean);
create or replace function durably.register_worker(
  p_id uuid, p_group text, p_host text, p_pid integer, p_functions text[], p_lease_ms integer,
  p_retry jsonb default '{}', p_named_wakes boolean default false, p_handoffs boolean default false
) returns void
language sql as $$
  insert into durably.workers (id, group_name, host, pid, functions, lease_ms, retry, named_wakes, handoffs)
  values (p_id, p_group, p_host, p_pid, p_functions, p_lease_ms, coalesce(p_retry, '{}'), p_named_wakes,
          p_named_wakes and p_handoffs)
  on conflict (id) do update
    set functions = excluded.functions, retry = excluded.retry, named_wakes = excluded.named_wakes,
        handoffs = excluded.handoffs, heartbeat_at = now(), stopped_at = null
$$;

-- One call per worker process renews every lease it holds. Returns the held
-- ids it no longer holds: their promise settled (canceled, timed out, or
-- completed elsewhere) or their lease was lost.
-- Only the leases the worker knows it holds are renewed: a claim whose reply
-- was lost (the connection dropped after the commit) leaves tasks claimed by
-- this worker that it never received; renewing every task of the worker would
-- keep them claimed, and never run, for as long as the worker lives. Not
-- renewed, their leases expire and another claim runs them.
-- A renewal writes lease_until (and handed: the worker has the task), columns
-- no index covers: HOT updates, no index entry per held task (see sql/tasks.sql).
create or replace function durably.heartbeat(p_worker uuid, p_lease_ms integer, p_held text[])
returns table (id text, state text)
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
set plan_cache_mode = force_generic_plan -- planned once a connection: see durably.claim_tasks
as $$
declare
  v_renewed text[];
begin
  update durably.workers w set heartbeat_at = now() where w.id = p_worker;
  with renewed as (
    update durably.tasks t
       set lease_until = now() + p_lease_ms * interval '1 millisecond', handed = false
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

-- Graceful shutdown: every task the worker holds is ready again at once,
-- handed ones included.
create or replace function durably.release_tasks(p_worker uuid)
returns integer
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
set plan_cache_mode = force_generic_plan -- planned once a connection: see durably.claim_tasks
as $$
declare
  v_count  integer;
  v_groups text[];
  v_funcs  text[];
  v_held   text[];
begin
  perform durably.stop_handoffs(p_worker);
  if exists (select 1 from durably.limits) then
    v_held := durably.held_limit_keys(array(select t.promise_seq from durably.tasks t where t.worker_id = p_worker));
  end if;
  with released as (
    update durably.tasks t
       set state = 'ready', worker_id = null, replay = true, available_at = now()
     where t.worker_id = p_worker and t.state = 'claimed'
    returning t.group_name, t.func
  )
  select count(*), array_agg(r.group_name), array_agg(r.func) into v_count, v_groups, v_funcs from released r;
  perform durably.wake_tasks(v_groups, v_funcs);
  perform durably.wake_parked(v_held);
  update durably.workers w set stopped_at = now() where w.id = p_worker;
  return v_count;
end $$;

-- What a claim tells about its worker (claim_tasks calls this last): a claim
-- that came back with fewer tasks than asked for leaves the worker with room
-- for p_asked - p_got more, and it is recorded idle (durably.idle_workers)
-- if it reads named wake-ups; a full claim takes it out, as it claims again
-- by itself as its slots free up. A row a wake-up holds is skipped (SKIP
-- LOCKED), never waited for: that wake-up took it out and is on its way.
create or replace function durably.record_claim(p_worker uuid, p_group text, p_asked integer, p_got integer)
returns void
language plpgsql as $$
declare
  v_free integer;
begin
  if p_got >= p_asked then
    delete from durably.idle_workers i
     where i.worker_id = (select x.worker_id from durably.idle_workers x where x.worker_id = p_worker for update skip locked);
    return;
  end if;
  -- An idle worker polling finds its row as it was: one probe, no write.
  select i.free into v_free from durably.idle_workers i where i.worker_id = p_worker;
  if not found then
    -- Only this worker's claims, one at a time, insert its row: no conflict to wait on.
    insert into durably.idle_workers (worker_id, group_name, free)
    select w.id, p_group, p_asked - p_got from durably.workers w where w.id = p_worker and w.named_wakes
    on conflict do nothing;
  elsif v_free <> p_asked - p_got then
    update durably.idle_workers i set free = p_asked - p_got
     where i.worker_id = (select x.worker_id from durably.idle_workers x where x.worker_id = p_worker for update skip locked);
  end if;
end $$;

-- Wakes workers of p_group for p_count tasks that became due, of the
-- functions p_funcs, after the calling transaction commits: by a NOTIFY on
-- durably_tasks naming, one a line after the group, idle workers that run
-- every function of p_funcs and have room for p_count together, longest idle
-- first. They leave durably.idle_workers here (FOR UPDATE SKIP LOCKED, so
-- wake-ups in concurrent transactions name different workers, and none
-- waits for another). When the idle workers found have too little room, or
-- p_funcs is not known (null), the payload is the group alone and every
-- worker of the group claims. A named worker that has died or stalled
-- misses its wake-up; the others' polls (every pollMs) claim the task.
create or replace function durably.wake_group(p_group text, p_count integer, p_funcs text[] default null)
returns void
language plpgsql as $$
declare
  -- a NOTIFY payload holds under 8000 bytes: about 200 names
  c_max_named constant integer := 100;
  v_idle cursor for
    select i.worker_id, i.free from durably.idle_workers i join durably.workers w on w.id = i.worker_id
     where i.group_name = p_group and w.functions @> p_funcs and w.stopped_at is null
       and w.heartbeat_at > now() - w.lease_ms * interval '1 millisecond'
     order by i.since
       for update of i skip locked;
  v_worker uuid;
  v_free   integer;
  v_room   bigint := 0;
  v_named  uuid[] := '{}';
begin
  if p_count <= 0 then
    return;
  end if;
  if p_funcs is not null then
    -- A cursor, not a FOR loop (which fetches rows ten at a time): only the rows taken are locked.
    open v_idle;
    while v_room < p_count and cardinality(v_named) < c_max_named loop
      fetch v_idle into v_worker, v_free;
      exit when not found;
      v_named := v_named || v_worker;
      v_room := v_room + v_free;
    end loop;
    close v_idle;
  end if;
  if v_room >= p_count then
    delete from durably.idle_workers i where i.worker_id = any(v_named);
    perform pg_notify('durably_tasks', p_group || E'\n' || array_to_string(v_named, E'\n'));
  else
    perform pg_notify('durably_tasks', p_group);
  end if;
end $$;

-- durably.wake_group for tasks made due, given by their groups and
-- functions (one element per task): each group once, for all of its tasks.
create or replace function durably.wake_tasks(p_groups text[], p_funcs text[]) returns void
language plpgsql as $$
begin
  perform durably.wake_group(u.g, count(*)::integer, array_agg(distinct u.f))
     from unnest(p_groups, p_funcs) u(g, f) group by u.g;
end $$;

-- An idle worker that can be handed a task of p_func in p_group now: it
-- takes handoffs, runs p_func, is alive; the longest idle. Its idle row is
-- locked (SKIP LOCKED: concurrent invocations pick different workers) until
-- the invoking transaction ends.
create or replace function durably.handoff_worker(p_group text, p_func text, out worker_id uuid, out lease_ms integer)
language plpgsql as $$
begin
  select i.worker_id, w.lease_ms into worker_id, lease_ms
    from durably.idle_workers i join durably.workers w on w.id = i.worker_id
   where i.group_name = p_group and w.handoffs and w.functions @> array[p_func] and w.stopped_at is null
     and w.heartbeat_at > now() - w.lease_ms * interval '1 millisecond'
   order by i.since
   limit 1
     for update of i skip locked;
end $$;

-- Sends a task created claimed for an idle worker (by durably.create_invocations,
-- which picked it with durably.handoff_worker) to that worker, whole, as a
-- claim would return it, on its channel durably_worker_<id>: the worker
-- starts it on receipt. Run at commit (the trigger tasks_handoff below), so
-- it sends what the transaction leaves: a task it took back (tick() suspends
-- a buffered tick), canceled or changed (tick() adds its trace context) is
-- sent as it is then, or not at all. The worker has one slot less (it goes
-- to the end of the idle order; with none left it is idle no more, and
-- claims again when it has room). A task too large for a notification (8000
-- bytes) is put back, ready, and its group woken instead. It runs at the
-- commit of an application's transaction, as the role committing, not the
-- owner the public function ran as: durably.grant_public_api makes it
-- SECURITY DEFINER, as the public functions.
create or replace function durably.hand_off() returns trigger
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
set plan_cache_mode = force_generic_plan -- planned once a connection: see durably.claim_tasks
as $$
declare
  v_payload text;
begin
  select json_build_object('id', p.id, 'func', p.func, 'args', p.args, 'state', p.state, 'timeout_at', p.timeout_at,
                           'root_id', p.root_id, 'attempt', t.attempt, 'retry', t.retry, 'history', null, 'seq', p.seq,
                           'trace_context', p.trace_context, 'ready_seconds', 0)::text
    into v_payload
    from durably.tasks t join durably.promises p on p.seq = t.promise_seq
   where t.promise_seq = new.promise_seq and p.seq = new.promise_seq
     and t.state = 'claimed' and t.handed and t.worker_id = new.worker_id;
  if not found then
    return null;
  end if;
  if octet_length(v_payload) >= 8000 then
    perform durably.put_back_handoffs(new.worker_id, array[new.promise_id]);
    return null;
  end if;
  update durably.idle_workers i set free = i.free - 1, since = now() where i.worker_id = new.worker_id and i.free > 1;
  if not found then
    delete from durably.idle_workers i where i.worker_id = new.worker_id;
  end if;
  perform pg_notify('durably_worker_' || new.worker_id, v_payload);
  -- (no wake-up on durably_tasks announces it to an open dashboard)
  perform durably.notify_watchers('handed');
  return null;
end $$;

drop trigger if exists tasks_handoff on durably.tasks;
create constraint trigger tasks_handoff after insert on durably.tasks
  deferrable initially deferred
  for each row when (new.handed) execute function durably.hand_off();

-- No more handoffs to p_worker: its idle row goes, after any transaction
-- that is handing it a task has ended (such a transaction holds the row's
-- lock), so every handoff to it is committed, or rolled back, when this
-- returns.
create or replace function durably.stop_handoffs(p_worker uuid) returns void
language sql as $$
  delete from durably.idle_workers i where i.worker_id = p_worker
$$;

-- A worker whose listening connection was lost may have missed handoffs
-- committed meanwhile: before it listens again it stops its handoffs (until
-- durably.resume_handoffs, once it listens: its polls meanwhile may record
-- it idle) and puts back the handed tasks it does not hold (p_held: every
-- task it knows it holds). Returns how many.
create or replace function durably.return_handoffs(p_worker uuid, p_held text[]) returns integer
language plpgsql as $$
begin
  update durably.workers w set handoffs = false where w.id = p_worker;
  perform durably.stop_handoffs(p_worker);
  return durably.put_back_handoffs(p_worker, null, p_held);
end $$;

-- Puts tasks handed to p_worker back, ready at their place in the claim
-- order, and wakes their groups: those of p_ids (all when null) but p_held.
-- A worker puts back one it received when it cannot be sure it is still
-- its own (see Worker.handedOff); one no longer handed to it is left as it is.
create or replace function durably.put_back_handoffs(p_worker uuid, p_ids text[], p_held text[] default '{}') returns integer
language plpgsql
set enable_seqscan = off -- planned for any table size: see durably.claim_tasks
set jit = off
as $$
declare
  v_groups text[];
  v_funcs  text[];
begin
  with returned as (
    update durably.tasks t
       set state = 'ready', worker_id = null, claimed_at = null, lease_until = null, handed = false, available_at = t.created_at
     where t.worker_id = p_worker and t.state = 'claimed' and t.handed
       and (p_ids is null or t.promise_id = any(p_ids)) and t.promise_id <> all(p_held)
    returning t.group_name, t.func
  )
  select array_agg(r.group_name), array_agg(r.func) into v_groups, v_funcs from returned r;
  perform durably.wake_tasks(v_groups, v_funcs);
  return coalesce(cardinality(v_groups), 0);
end $$;

-- A worker listens again after durably.return_handoffs: it may be handed work.
create or replace function durably.resume_handoffs(p_worker uuid) returns void
language sql as $$
  update durably.workers w set handoffs = w.named_wakes where w.id = p_worker
$$;
