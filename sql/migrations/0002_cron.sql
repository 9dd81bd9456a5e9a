-- Cron evaluation (the functions are in sql/cron.sql): a cron expression
-- compiled to one bit mask per field.

create type durably.cron_spec as (
  seconds        bigint,   -- bits 0-59
  minutes        bigint,   -- bits 0-59
  hours          integer,  -- bits 0-23
  days           bigint,   -- bits 1-31
  months         integer,  -- bits 1-12
  weekdays       integer,  -- bits 0-6, Sunday = 0
  last_weekdays  integer,  -- bits 0-6: nL, the last such weekday of the month
  nth_weekday    integer,  -- w#n: n (1-5), 0 when not used
  last_day       boolean,  -- L in day of month
  dom_restricted boolean,  -- day of month not written * or ?
  dow_restricted boolean   -- day of week not written * or ?
);
