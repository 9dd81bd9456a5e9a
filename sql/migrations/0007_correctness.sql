-- Claims take only tasks whose function the claiming worker registered: the
-- function is on the task, so the pick needs no join. Workers record the
-- retry policy each function was registered with; a claim applies it when a
-- lease expired.
alter table durably.tasks add column func text;
update durably.tasks t set func = p.func from durably.promises p where p.seq = t.promise_seq;
alter table durably.tasks alter column func set not null;
alter table durably.workers add column retry jsonb not null default '{}';

-- A tree's members by root: a promise made inside a step that has not
-- finished has no parent row yet, so cancel and retention find it by its
-- root. Roots themselves (no parent) are left out: invocations pay nothing.
create index promises_root on durably.promises (root_id) where parent_id is not null;

-- The owner of the SECURITY DEFINER functions applications call (role
-- durably_app): a NOLOGIN role with rights on durably's tables only, rather
-- than whoever migrated (often a superuser). Roles are cluster-wide; where
-- the migrating user may not create roles, this is skipped with a notice and
-- the functions keep their owner.
do $$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'durably_owner') then
    begin
      create role durably_owner nologin;
    exception
      when duplicate_object or unique_violation then null;
      when insufficient_privilege then
        raise notice 'durably: no permission to create role durably_owner; the public functions run as their creator';
    end;
  end if;
  if exists (select 1 from pg_catalog.pg_roles where rolname = 'durably_owner')
     and not pg_has_role(current_user, 'durably_owner', 'member') then
    begin
      execute format('grant durably_owner to %I', current_user);
    exception when insufficient_privilege then
      raise notice 'durably: no permission to grant durably_owner to %; the public functions run as their creator', current_user;
    end;
  end if;
end $$;
