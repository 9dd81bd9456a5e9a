-- The role applications are granted (`grant durably_app to my_app`): it may
-- call the public functions and read the views (sql/public_api.sql grants
-- them). Roles are cluster-wide: the role is created once per server, by
-- whichever database migrates first. Where the migrating user may not create
-- roles, this is skipped with a notice; an administrator can create the role
-- later and run `select durably.grant_public_api()` as the schema owner.

do $$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'durably_app') then
    begin
      create role durably_app nologin;
    exception
      -- another database of this server created it meanwhile
      when duplicate_object or unique_violation then null;
      when insufficient_privilege then
        raise notice 'durably: no permission to create role durably_app; create it and run select durably.grant_public_api()';
    end;
  end if;
end $$;
