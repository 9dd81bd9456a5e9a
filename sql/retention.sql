-- Retention: a settled invocation is the durable record of its result, kept
-- for a retention period and then deleted with its whole tree (steps,
-- timers, children, external promises it made). Workers call prune_promises
-- with their configured retention (default 7 days) about once a minute, and
-- again at once while a call finds a full batch; any number may run it at
-- once (SKIP LOCKED on the roots, and trees do not share rows).
--
-- A tree is deleted only when every member settled longer than the
-- retention period ago: a root settled past the retention period whose tree
-- still has a pending member (a detached child invocation, a timer, an
-- external promise) is kept, and looked at again on each pass, until that
-- member settles (every pending promise has a timeout) and its own
-- retention period has passed, so whoever waits for it finds its result. A
-- tree with no pending member has no task and no deadline (both go when a
-- promise settles) and is awaited by no callback, so only its promises are
-- deleted.
--
-- Old roots are found by created_at (promises_roots, an index settlements do
-- not touch) and checked for settled_at on the row; a tree's members by
-- their root (promises_root), which also reaches a promise made inside a
-- step that had not finished (no parent row when it was made).
create or replace function durably.prune_promises(p_older_than interval default '7 days', p_limit integer default 5000)
returns integer
language plpgsql as $$
declare
  v_cutoff  timestamptz := now() - p_older_than;
  v_roots   text[];
  v_seqs    bigint[];
  v_members integer;
begin
  if p_older_than is null or p_older_than < interval '0' then
    raise exception using errcode = 'DU002', message = format('invalid retention period %s: not negative', p_older_than);
  end if;
  if p_limit is null or p_limit not between 1 and 100000 then
    raise exception using errcode = 'DU002', message = format('invalid limit %s: 1 to 100000', p_limit);
  end if;
  select array_agg(r.id), array_agg(r.seq) into v_roots, v_seqs
    from (select p.id, p.seq from durably.promises p
           where p.parent_id is null and p.created_at < v_cutoff and p.settled_at < v_cutoff
             and not exists (select 1 from durably.promises m
                              where m.root_id = p.id and m.parent_id is not null
                                and (m.settled_at is null or m.settled_at >= v_cutoff))
           order by p.created_at
           limit p_limit
             for update of p skip locked) r;
  if v_roots is null then
    return 0;
  end if;
  delete from durably.promises m where m.root_id = any(v_roots) and m.parent_id is not null;
  get diagnostics v_members = row_count;
  delete from durably.promises p where p.seq = any(v_seqs);
  return cardinality(v_seqs) + v_members;
end $$;

-- Workers that stopped, or stopped heartbeating, longer than p_older_than
-- ago are forgotten: every process start adds a row. Called with
-- prune_promises by every worker (retention or not).
create or replace function durably.prune_workers(p_older_than interval default '1 day')
returns integer
language plpgsql as $$
declare
  v_count integer;
begin
  if p_older_than is null or p_older_than < interval '0' then
    raise exception using errcode = 'DU002', message = format('invalid retention period %s: not negative', p_older_than);
  end if;
  delete from durably.workers w
   where w.id in (select x.id from durably.workers x
                   where coalesce(x.stopped_at, x.heartbeat_at) < now() - p_older_than
                     for update skip locked);
  get diagnostics v_count = row_count;
  -- rows of forgotten workers (durably.idle_workers has no foreign key)
  delete from durably.idle_workers i where not exists (select 1 from durably.workers w where w.id = i.worker_id);
  return v_count;
end $$;
