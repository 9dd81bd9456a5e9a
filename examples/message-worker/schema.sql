-- The records whose items the workflow deletes, and a log of what each batch did.
create table if not exists record_items (
  record_id text not null,
  item      integer not null,
  primary key (record_id, item)
);

create table if not exists deletion_log (
  id        bigserial primary key,
  record_id text not null,
  batch     integer not null,
  deleted   integer not null,
  worker    text not null,
  at        timestamptz not null default clock_timestamp()
);
