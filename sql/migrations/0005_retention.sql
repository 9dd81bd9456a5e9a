-- Retention (durably.prune_promises in sql/retention.sql) finds settled
-- roots past the retention period by their settlement time.

create index promises_settled_roots on durably.promises (settled_at) where parent_id is null;
