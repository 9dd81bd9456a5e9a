/**
 * Retention: durably.prune_promises deletes settled invocations past the
 * retention period with their whole call tree, and nothing else.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { testDatabase } from './helpers/db.js';

const db = await testDatabase();
const sql = db.sql;

async function ids(): Promise<string[]> {
  return (await sql<{ id: string }[]>`select id from durably.promises order by id`).map((r) => r.id);
}

test('prune_promises deletes old settled trees (steps, timers, children, tasks) and keeps recent and pending ones', async () => {
  // an old settled root with a step, a pending timer and a child invocation that still has a task
  await sql`select * from durably.invoke('old', 'f', '[]', 'g')`;
  await sql`select * from durably.create_child_promise('old.0', 'step', 'old', 'old', now() + interval '1 day',
    p_state => 'resolved', p_value => '1', p_func => 'step')`;
  await sql`select * from durably.create_child_promise('old.1', 'sleep', 'old', 'old', now() + interval '1 day')`;
  await sql`select * from durably.create_invocations('{old.2}', '{child}', array['[]'::jsonb], 'g', '{"parent_id": "old"}')`;
  await sql`select * from durably.resolve('old', '"done"')`;
  // a recent settled root, and an old pending one
  await sql`select * from durably.invoke('recent', 'f', '[]', 'g')`;
  await sql`select * from durably.resolve('recent', '1')`;
  await sql`select * from durably.invoke('waiting', 'f', '[]', 'g')`;
  const age = () => sql`update durably.promises set created_at = now() - interval '9 days',
                          settled_at = settled_at - interval '8 days' where root_id = 'old'`;
  await age();
  await sql`update durably.promises set created_at = now() - interval '30 days' where id = 'waiting'`;

  const [{ prune_promises: kept }] = await sql`select durably.prune_promises('7 days')`;
  assert.equal(kept, 0, 'an old tree is kept while a member is pending (the timer, the child)');
  await sql`select count(*) from durably.settle_many(array['old.1', 'old.2'], array['resolved', 'resolved'], array[null, null]::jsonb[])`;
  const [{ prune_promises: fresh }] = await sql`select durably.prune_promises('7 days')`;
  assert.equal(fresh, 0, 'and for the retention period after its last member settled');
  await age();
  const [{ prune_promises: removed }] = await sql`select durably.prune_promises(${7 * 86_400_000} * interval '1 millisecond')`;
  assert.equal(removed, 4, 'the old root and its three descendants');
  assert.deepEqual(await ids(), ['recent', 'waiting']);
  const tasks = (await sql<{ promise_id: string }[]>`select promise_id from durably.tasks order by 1`).map((r) => r.promise_id);
  assert.deepEqual(tasks, ['waiting'], "the old child's task went when it settled; the pending invocation keeps its own");
  const deadlines = await sql`select p.id from durably.deadlines d join durably.promises p on p.seq = d.promise_seq`;
  assert.deepEqual(deadlines.map((r) => r.id), ['waiting'], 'the timer and child of the old tree took their deadlines along when they settled');

  const [{ prune_promises: none }] = await sql`select durably.prune_promises('7 days')`;
  assert.equal(none, 0);
  const [{ prune_promises: all }] = await sql`select durably.prune_promises('0 seconds')`;
  assert.equal(all, 1, 'with no retention only the settled one goes');
  assert.deepEqual(await ids(), ['waiting']);
});
