-- The dashboard's reads on large databases.
--
-- A schedule's recent ticks (promises tagged durably:schedule), newest first.
-- Partial, so invocations that are not ticks cost nothing here; its columns
-- never change after insert, so settlements stay HOT updates.
create index promises_schedule_ticks on durably.promises ((tags->>'durably:schedule'), seq)
  where tags ? 'durably:schedule';
