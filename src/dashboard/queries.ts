/**
 * What the dashboard reads. Plain reads of durably's tables and views (the
 * dashboard's role needs SELECT on schema durably), each bounded so that a
 * page answers quickly on a database with millions of promises:
 *   * lists page by sequence number (keyset on the promises_seq index, never
 *     OFFSET) and look at most SCAN_WINDOW promises per page, so a filter that
 *     matches rarely costs one window, with a link to search further back;
 *   * counts are capped (COUNT_CAP) or taken over the newest SCAN_WINDOW
 *     promises, and say so.
 */
import type { Sql } from '../db.js';
import type { PromiseRecord, PromiseState } from '../promises.js';
import type { ScheduleListRow, TaskListRow, WorkerStatusRow } from '../kysely.js';

export const PAGE_SIZE = 50;
export const SCAN_WINDOW = 100_000;
export const COUNT_CAP = 10_000;
export const STATES: PromiseState[] = ['pending', 'resolved', 'rejected', 'rejected_canceled', 'rejected_timedout'];
export const KINDS = ['invoke', 'step', 'sleep', 'external'] as const;

export interface PromiseRow extends PromiseRecord {
  seq: number;
  group_name: string | null;
  task_state: TaskListRow['state'] | null;
  attempt: number | null;
  available_at: Date | null;
  worker_id: string | null;
  last_error: unknown;
}

/** The filters of the promise list, as they appear in its URL. */
export interface PromiseFilter {
  state?: PromiseState;
  func?: string;
  group?: string;
  kind?: (typeof KINDS)[number];
  /** `key=value`: promises whose tags hold it. */
  tag?: { key: string; value: string };
  /** Id pattern, `*` any run of characters. */
  pattern?: string;
  from?: Date;
  to?: Date;
  /** Every promise, or only top-level invocations (the default). */
  all?: boolean;
}

export interface PromisePage {
  rows: PromiseRow[];
  /** Sequence number to continue below, when older promises may match. */
  next: number | null;
  /** The window ended before a page was full: `next` continues the search. */
  windowEnded: boolean;
}

/**
 * A task's available_at as operators read it (durably.task_list): for a
 * claimed task its lease expiry, for a ready one since when it may run (due,
 * or woken: a resumed execution keeps an older place in the claim order).
 */
const AVAILABLE_AT = `case when t.state = 'claimed' then t.lease_until else greatest(t.available_at, t.woken_at) end as available_at`;

/** Promises with their task: the columns of PromiseRow. */
const PROMISES = `select p.seq, p.id, p.state, p.kind, p.func, p.args, p.value, p.tags, p.parent_id, p.root_id, p.timeout_at,
       p.created_at, p.settled_at, t.group_name, t.state as task_state, t.attempt, ${AVAILABLE_AT}, t.worker_id, t.last_error
  from durably.promises p left join durably.tasks t on t.promise_seq = p.seq`;

function likePattern(pattern: string): string {
  return pattern.replace(/[\\%_]/g, (c) => `\\${c}`).replaceAll('*', '%');
}

/**
 * A query with a filter's conditions: `where` followed by them, every value a
 * parameter ($1, $2 ... after `params`, which the caller's own text uses).
 */
function filtered(f: PromiseFilter, params: unknown[], where: string[], from = PROMISES): { text: string; params: unknown[] } {
  const all = [...params];
  const conds = [...where];
  const add = (cond: string, value: unknown) => { all.push(value); conds.push(cond.replace('?', `$${all.length}`)); };
  if (!f.all) conds.push('p.parent_id is null');
  if (f.state) add('p.state = ?', f.state);
  if (f.func) add('p.func = ?', f.func);
  if (f.kind) add('p.kind = ?', f.kind);
  if (f.group) add('t.group_name = ?', f.group);
  if (f.tag) add('p.tags @> ?::text::jsonb', JSON.stringify({ [f.tag.key]: f.tag.value }));
  if (f.pattern) add('p.id like ?', likePattern(f.pattern));
  if (f.from) add('p.created_at >= ?::timestamptz', f.from.toISOString());
  if (f.to) add('p.created_at < ?::timestamptz', f.to.toISOString());
  return { text: `${from} where ${conds.join(' and ') || 'true'}`, params: all };
}

/** Sequence-number bounds of a time range, found through the promises_roots index (creation order = seq order). */
async function seqBounds(sql: Sql, f: PromiseFilter): Promise<{ hi: number | null; lo: number | null }> {
  const [r] = await sql<{ hi: number | null; lo: number | null; top: number | null }[]>`
    select (select p.seq from durably.promises p where p.parent_id is null and p.created_at < ${f.to ?? null}
             order by p.created_at desc limit 1) as hi,
           (select p.seq from durably.promises p where p.parent_id is null and p.created_at >= ${f.from ?? null}
             order by p.created_at limit 1) as lo,
           (select max(seq) from durably.promises) as top`;
  // Steps of a root are created after it: with a range end, look up to the newest promise that could be one.
  return { hi: f.to ? (f.all ? r.top : r.hi) : r.top, lo: f.from ? r.lo : null };
}

/** Newest first, PAGE_SIZE rows below `before` (a sequence number), looking at most SCAN_WINDOW promises. */
export async function listPromises(sql: Sql, f: PromiseFilter, before?: number): Promise<PromisePage> {
  const bounds = await seqBounds(sql, f);
  if (bounds.hi === null || (f.from && bounds.lo === null)) return { rows: [], next: null, windowEnded: false };
  const top = Math.min(before ?? Infinity, bounds.hi + 1);
  const floor = Math.max(top - SCAN_WINDOW, bounds.lo ?? 0);
  const q = filtered(f, [top, floor], ['p.seq < $1', 'p.seq >= $2']);
  const rows = await sql.unsafe<PromiseRow[]>(`${q.text} order by p.seq desc limit ${PAGE_SIZE + 1}`, q.params as never[]);
  if (rows.length > PAGE_SIZE) {
    rows.length = PAGE_SIZE;
    return { rows, next: rows[PAGE_SIZE - 1].seq, windowEnded: false };
  }
  const more = floor > (bounds.lo ?? 1) && floor > 1;
  return { rows, next: more ? floor : null, windowEnded: more };
}

/**
 * Pending promises only, found through their deadlines (every pending promise
 * has one; settled ones have none), so a filter is checked against the
 * pending promises and not against every promise ever kept.
 */
const PENDING = PROMISES.replace('from durably.promises p', 'from durably.deadlines d join durably.promises p on p.seq = d.promise_seq');

/** How many pending promises match a filter (capped at COUNT_CAP), for the bulk cancel confirmation. */
export async function countPending(sql: Sql, f: PromiseFilter): Promise<number> {
  const q = filtered({ ...f, state: 'pending' }, [], [], PENDING);
  const [r] = await sql.unsafe<{ n: number }[]>(`select count(*)::int as n from (${q.text} limit ${COUNT_CAP}) x`, q.params as never[]);
  return r.n;
}

/** Ids of the pending promises matching a filter (at most COUNT_CAP), oldest first. */
export async function pendingIds(sql: Sql, f: PromiseFilter): Promise<string[]> {
  const q = filtered({ ...f, state: 'pending' }, [], [], PENDING);
  const rows = await sql.unsafe<{ id: string }[]>(`${q.text} order by p.seq limit ${COUNT_CAP}`, q.params as never[]);
  return rows.map((r) => r.id);
}

export async function getPromise(sql: Sql, id: string): Promise<PromiseRow | undefined> {
  const [row] = await sql.unsafe<PromiseRow[]>(`${PROMISES} where p.id = $1`, [id]);
  return row;
}

export interface TreeNode extends PromiseRow {
  depth: number;
}

/** A promise and its descendants, depth first, siblings in creation order (at most 2,000 nodes). */
export async function callTree(sql: Sql, id: string): Promise<TreeNode[]> {
  return sql.unsafe<TreeNode[]>(`
    with recursive tree as (
      select p.seq, p.id, 0 as depth, array[p.seq] as path from durably.promises p where p.id = $1
      union all
      select c.seq, c.id, t.depth + 1, t.path || c.seq
        from durably.promises c join tree t on c.parent_id = t.id
       where t.depth < 50)
    select x.*, tree.depth from tree join (${PROMISES}) x on x.seq = tree.seq
     order by tree.path
     limit 2000`, [id]);
}

export interface Overview {
  byFunction: { func: string; state: PromiseState; n: number }[];
  perMinute: { minute: Date; resolved: number; failed: number }[];
  groups: { group_name: string; ready: number; claimed: number; suspended: number; oldest_ready: Date | null }[];
  workers: { active: number; stale: number };
  failures: PromiseRow[];
  /** The newest SCAN_WINDOW promises were counted: older ones are not in byFunction, perMinute and failures. */
  windowed: boolean;
}

export async function overview(sql: Sql): Promise<Overview> {
  const [[top], byFunction, perMinute, groups, [workers], failures] = await Promise.all([
    sql<{ top: number | null; bottom: number | null }[]>`select max(seq) as top, min(seq) as bottom from durably.promises`,
    sql<Overview['byFunction']>`
      select p.func, p.state, count(*)::int as n
        from durably.promises p
       where p.seq > (select max(seq) from durably.promises) - ${SCAN_WINDOW} and p.kind = 'invoke'
       group by p.func, p.state order by p.func, p.state`,
    sql<Overview['perMinute']>`
      select date_trunc('minute', p.settled_at) as minute,
             count(*) filter (where p.state = 'resolved')::int as resolved,
             count(*) filter (where p.state in ('rejected', 'rejected_timedout'))::int as failed
        from durably.promises p
       where p.seq > (select max(seq) from durably.promises) - ${SCAN_WINDOW}
         and p.kind = 'invoke' and p.settled_at > now() - interval '1 hour'
       group by 1 order by 1`,
    taskGroups(sql),
    sql<{ active: number; stale: number }[]>`
      select count(*) filter (where status = 'active')::int as active, count(*) filter (where status = 'stale')::int as stale
        from durably.worker_status`,
    sql.unsafe<PromiseRow[]>(`${PROMISES}
       where p.seq > (select max(seq) from durably.promises) - ${SCAN_WINDOW}
         and p.kind = 'invoke' and p.state in ('rejected', 'rejected_timedout')
       order by p.seq desc limit 10`),
  ]);
  return {
    byFunction, perMinute, groups, workers, failures,
    windowed: top.top !== null && top.bottom !== null && top.top - top.bottom >= SCAN_WINDOW,
  };
}

/**
 * Tasks per group: ready (capped at COUNT_CAP), claimed, suspended, and the
 * oldest ready task's due time. Groups are found by skipping through the
 * tasks_claim index, one probe per group.
 */
export async function taskGroups(sql: Sql): Promise<Overview['groups']> {
  return sql<Overview['groups']>`
    with recursive groups as (
      (select t.group_name from durably.tasks t order by t.group_name limit 1)
      union all
      select (select t.group_name from durably.tasks t where t.group_name > g.group_name order by t.group_name limit 1)
        from groups g where g.group_name is not null)
    select g.group_name,
           (select count(*)::int from (select 1 from durably.tasks t
             where t.group_name = g.group_name and t.state = 'ready' limit ${COUNT_CAP}) x) as ready,
           (select count(*)::int from durably.tasks t where t.group_name = g.group_name and t.worker_id is not null) as claimed,
           (select count(*)::int from (select 1 from durably.tasks t
             where t.group_name = g.group_name and t.state = 'suspended' limit ${COUNT_CAP}) x) as suspended,
           -- resumed executions come back to an older place: the first 100 hold the oldest (see metrics.sql)
           (select min(greatest(t.available_at, t.woken_at)) from (select t.available_at, t.woken_at from durably.tasks t
             where t.group_name = g.group_name and t.state = 'ready' order by t.available_at limit 100) t) as oldest_ready
      from groups g where g.group_name is not null
     order by g.group_name`;
}

export async function workers(sql: Sql): Promise<(WorkerStatusRow & { held: number })[]> {
  return sql<(WorkerStatusRow & { held: number })[]>`
    -- functions as JSON: durably's pools do not fetch array types
    select w.id, w.group_name, w.host, w.pid, to_jsonb(w.functions) as functions, w.lease_ms, w.started_at,
           w.heartbeat_at, w.stopped_at, w.status,
           (select count(*)::int from durably.tasks t where t.worker_id = w.id) as held
      from durably.worker_status w
     order by (w.status = 'active') desc, w.heartbeat_at desc
     limit 500`;
}

export async function schedules(sql: Sql): Promise<ScheduleListRow[]> {
  return sql<ScheduleListRow[]>`select * from durably.schedule_list order by id limit 1000`;
}

export async function getSchedule(sql: Sql, id: string): Promise<ScheduleListRow | undefined> {
  const [row] = await sql<ScheduleListRow[]>`select * from durably.schedule_list where id = ${id}`;
  return row;
}

export async function schedulePreview(sql: Sql, id: string, n: number): Promise<Date[]> {
  const rows = await sql<{ at: Date }[]>`select t as at from durably.schedule_preview(${id}, ${n}) t`;
  return rows.map((r) => r.at);
}

/** The latest ticks of a schedule (promises tagged durably:schedule), newest first. */
export async function recentTicks(sql: Sql, id: string, n = 20): Promise<PromiseRow[]> {
  return sql.unsafe<PromiseRow[]>(`${PROMISES}
     where p.tags ? 'durably:schedule' and p.tags->>'durably:schedule' = $1
     order by p.seq desc limit $2`, [id, n]);
}

export async function tasks(sql: Sql, limit = 100): Promise<TaskListRow[]> {
  return sql<TaskListRow[]>`
    select t.promise_id, p.func, t.group_name, t.state, ${sql.unsafe(AVAILABLE_AT)}, t.attempt, t.worker_id,
           t.claimed_at, t.last_error, t.created_at, p.root_id, p.timeout_at
      from durably.tasks t join durably.promises p on p.seq = t.promise_seq
     order by t.group_name, t.available_at limit ${limit}`;
}
