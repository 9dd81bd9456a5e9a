-- Retention: a settled invocation is the durable record of its result, kept
-- for a retention period and then deleted with its whole call tree (steps,
-- timers, children) and any task left on it. Workers call prune_promises
-- about once a minute with their configured retention (default 7 days); any
-- number may run it at once (SKIP LOCKED on the roots).

create index promises_settled_roots on durably.promises (settled_at) where parent_id is null;

create function durably.prune_promises(p_older_than interval default '7 days', p_limit integer default 1000)
returns integer
language plpgsql as $$
declare
  v_roots text[];
  v_tree  text[];
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
    select p.id from durably.promises p where p.id = any(v_roots)
    union all
    select c.id from durably.promises c join tree t on c.parent_id = t.id
  )
  select array_agg(tree.id) into v_tree from tree;
  delete from durably.tasks t where t.promise_id = any(v_tree);
  delete from durably.callbacks c where c.task_id = any(v_tree) or c.promise_id = any(v_tree);
  delete from durably.promises p where p.id = any(v_tree);
  return cardinality(v_tree);
end $$;

-- Worker-side, like claim_tasks: not part of the durably_app API.
revoke execute on function durably.prune_promises(interval, integer) from public;
