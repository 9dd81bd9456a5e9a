-- Engine changes for large backlogs (a million pending invocations, millions
-- of retained results).
--
-- Tasks are keyed by their promise's sequence number, not by its text id. A
-- claim rewrites its task row (the lease moves available_at, an indexed
-- column), so every claim inserts into each index of tasks. Keyed by text
-- ids, which callers choose and which rarely sort in creation order, that
-- insert and the lookup before it land on a different index page for every
-- task: on a backlog larger than shared_buffers each claim of 100 read and
-- rewrote about 60 pages of the key. Sequence numbers follow creation order,
-- so a backlog is claimed, joined and deleted page after page.

alter table durably.promises add column seq bigint generated always as identity;
create unique index promises_seq on durably.promises (seq);

alter table durably.tasks add column promise_seq bigint;
update durably.tasks t set promise_seq = p.seq from durably.promises p where p.id = t.promise_id;
alter table durably.tasks alter column promise_seq set not null;
alter table durably.tasks drop constraint tasks_pkey;
alter table durably.tasks add constraint tasks_pkey primary key (promise_seq);

-- Settlements are HOT updates, and workers find promises by sequence number.
-- A settlement used to rewrite every index of the promise: state was in the
-- predicate of promises_pending_timeout and settled_at was the key of
-- promises_settled_roots, so the update could not be HOT, and it inserted
-- into the text primary key, a different cold page for nearly every promise
-- of a large backlog. Now no index of promises covers a column a settlement
-- changes, the pages keep room for the settled version (fillfactor 50: a
-- promise is written twice), and the worker passes the sequence numbers that
-- claim_tasks returned. The worker's hot path never reads the text key.
--   * Deadlines of pending promises live in durably.deadlines (inserted with
--     the promise, deleted when it settles); expire_promises reads them.
--   * Retention finds old roots by created_at (prune_promises checks
--     settled_at on the row).

create table durably.deadlines (
  promise_seq bigint primary key,
  timeout_at  timestamptz not null
);
create index deadlines_due on durably.deadlines (timeout_at);
insert into durably.deadlines (promise_seq, timeout_at)
select p.seq, p.timeout_at from durably.promises p where p.state = 'pending';

drop index durably.promises_pending_timeout;
drop index durably.promises_settled_roots;
create index promises_roots on durably.promises (created_at) where parent_id is null;
-- New pages only; existing ones keep their fill until rewritten.
alter table durably.promises set (fillfactor = 50);

-- Signatures that changed: settle_many takes the sequence numbers, and
-- claim_tasks returns them (sql/promises.sql, sql/tasks.sql).
drop function if exists durably.settle_many(text[], text[], jsonb[]);
drop function if exists durably.claim_tasks(uuid, text, integer, integer);
