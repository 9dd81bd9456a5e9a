-- Settlements notify durably_settled only for promises someone waits on: a
-- caller that invokes and waits marks its invocation when making it, a waiter
-- marks the promise it waits for (durably.await_promise). A column with a
-- constant default rewrites no rows.
alter table durably.promises add column awaited boolean not null default false;

-- Who watches every settlement (an open dashboard page): while one has been
-- seen within a minute, each settlement also notifies durably_watch.
create table durably.watchers (
  id      uuid primary key,
  seen_at timestamptz not null default now()
);
