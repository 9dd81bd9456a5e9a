-- Claims take keyed work from its keys in turn (durably.pick_by_priority):
-- whether a group has any keyed task is one probe of this index, which holds
-- only keyed tasks (none: it is empty, and claims keep the plain path).
create index tasks_keyed on durably.tasks (group_name) where concurrency_key is not null;
