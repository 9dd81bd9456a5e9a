-- Leases apart from the claim order, and resumed executions ahead of the backlog.
--
-- A claimed task's lease expiry is lease_until, renewed by every heartbeat.
-- It is in no index, so a renewal is a HOT update: no index entry is written,
-- however many tasks a worker holds. available_at, the key of tasks_claim, is
-- still when a claim looks at the task again: set to the lease expiry by the
-- claim, and moved to lease_until by a claim that meets it while the lease
-- still runs (one indexed write per lease period of a long execution, none
-- for one shorter than its lease).
alter table durably.tasks add column lease_until timestamptz;
update durably.tasks t set lease_until = t.available_at where t.state = 'claimed';

-- A resumed execution (what it awaited settled, or its timer came due) goes
-- back to where it stood in the claim order, ahead of what became due after
-- it started; woken_at is when it became runnable again (start delays are
-- measured from it).
alter table durably.tasks add column woken_at timestamptz;

-- Claims make due timers runnable: suspended tasks by wake-up time, a small
-- index beside the backlog's.
create index tasks_timers on durably.tasks (group_name, available_at) where state = 'suspended';

-- Room on each page for the versions heartbeats write (new pages only;
-- existing ones keep their fill until rewritten). A claim makes a row about
-- half again as wide (worker, lease), and a page is pruned only once its
-- free space falls under the fillfactor's reserve. Measured with every task
-- of 100 pages held by one worker, the share of renewals that were HOT:
-- fillfactor 50: 50%, 60: 92%, 70: 81%, 80: 65%. Tasks held at once are
-- usually a few of a page's rows, and all of them fit.
alter table durably.tasks set (fillfactor = 60);
