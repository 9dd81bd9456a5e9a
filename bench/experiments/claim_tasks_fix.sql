-- Proposed replacement for durably.claim_tasks (bench experiment only; the
-- engine's sql/0001_engine.sql is not changed by the bench).
--
-- Why: claim_tasks is a LANGUAGE sql function, so its statement is planned
-- with p_limit as an unknown parameter (a generic plan): the planner assumes
-- `limit p_limit` returns 10 % of the table and joins the picked rows back to
-- durably.tasks and durably.promises with hash joins over SEQUENTIAL SCANS of
-- both tables. Every claim therefore reads the whole backlog and every
-- promise ever retained (200+ ms per claim at 100k pending).
--
-- Fix: pick into an array first, then touch only those rows by primary key
-- (= any(array) is an index scan whatever the plan). Same locking (FOR UPDATE
-- SKIP LOCKED on tasks), same result columns, same attempt/replay semantics:
-- in an UPDATE's SET list t.state is the row's old state.
create or replace function durably.claim_tasks(p_worker uuid, p_group text, p_limit integer, p_lease_ms integer)
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
