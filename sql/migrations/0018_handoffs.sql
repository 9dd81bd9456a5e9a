-- Handoffs (durably.hand_off): an invocation that an idle worker can start
-- at once is claimed for that worker by the invoking transaction and sent to
-- it whole in a notification on the worker's own channel, so it starts on
-- receipt, without a claim's round trip.
--
-- handed: claimed by a handoff that its worker may not have received yet.
-- Such a lease does not run out while its worker is alive (the handoff was
-- committed by a transaction that may have run for longer than a lease);
-- the worker's first heartbeat that holds the task clears it.
alter table durably.tasks add column handed boolean not null default false;
-- Workers that take handoffs (listen on durably_worker_<id>): only these are handed work.
alter table durably.workers add column handoffs boolean not null default false;
