/**
 * What the dashboard's buttons do: each is a call of a public durably
 * function (what the role durably_app may do), with its errors typed.
 */
import { callProcedure, textArray, type Sql } from '../db.js';
import { triggerSchedule as tracedTrigger } from '../tracing.js';
import { InvalidArgumentError, NotFoundError, toErrorValue } from '../errors.js';
import { toJson } from '../json.js';
import { pendingIds, type PromiseFilter } from './queries.js';

/** Cancels a promise and its pending descendants (durably.cancel). */
export async function cancel(sql: Sql, id: string): Promise<void> {
  await callProcedure(() => sql`select 1 from durably.cancel(${id}, 'canceled from the dashboard')`);
}

/** Resolves an external promise with a JSON value (text as typed by the user). */
export async function resolve(sql: Sql, id: string, valueText: string): Promise<void> {
  let value: unknown = null;
  if (valueText.trim() !== '') {
    try {
      value = JSON.parse(valueText);
    } catch {
      throw new InvalidArgumentError(`the value is not valid JSON: ${valueText}`);
    }
  }
  const text = toJson(value, 'the value');
  await callProcedure(() => sql`select 1 from durably.resolve(${id}, ${text}::text::jsonb)`);
}

/** Rejects an external promise with an error carrying `message`. */
export async function reject(sql: Sql, id: string, message: string): Promise<void> {
  const text = toJson(toErrorValue(message || 'rejected'), 'the error');
  await callProcedure(() => sql`select 1 from durably.reject(${id}, ${text}::text::jsonb)`);
}

/**
 * A new invocation of a settled invocation's function and args, under a new
 * id, on `group`, with the original's tags and timeout and the tag
 * `durably:rerun_of` naming the original. Returns the new id.
 */
export async function rerun(sql: Sql, id: string, group: string): Promise<string> {
  const [p] = await sql<{ func: string | null; args: unknown[] | null; tags: Record<string, string>; kind: string;
    state: string; timeout_ms: number }[]>`
    select func, args, tags, kind, state,
           (extract(epoch from (timeout_at - created_at)) * 1000)::bigint as timeout_ms
      from durably.promises where id = ${id}`;
  if (!p) throw new NotFoundError(`promise ${JSON.stringify(id)} not found`);
  if (p.kind !== 'invoke' || !p.func) throw new InvalidArgumentError(`promise ${JSON.stringify(id)} is not an invocation`);
  if (p.state === 'pending') throw new InvalidArgumentError(`promise ${JSON.stringify(id)} is still pending`);
  const newId = `${id}.rerun-${Date.now().toString(36)}`;
  const opts = JSON.stringify({ timeout_ms: Math.max(1, p.timeout_ms), tags: { ...p.tags, 'durably:rerun_of': id } });
  await callProcedure(() => sql`
    select 1 from durably.invoke(${newId}, ${p.func}, ${JSON.stringify(p.args ?? [])}::text::jsonb, ${group}, ${opts}::text::jsonb)`);
  return newId;
}

/** Cancels every pending promise matching a filter (at most COUNT_CAP), 500 per statement; returns how many. */
export async function cancelMatching(sql: Sql, filter: PromiseFilter): Promise<number> {
  const ids = await pendingIds(sql, filter);
  for (let i = 0; i < ids.length; i += 500) {
    const chunk = textArray(ids.slice(i, i + 500));
    await callProcedure(() => sql`
      select count(*) from unnest(${chunk}::text[]) as x(id), lateral durably.cancel(x.id, 'canceled from the dashboard') c`);
  }
  return ids.length;
}

export async function pauseSchedule(sql: Sql, id: string, paused: boolean): Promise<void> {
  await callProcedure(() => paused
    ? sql`select 1 from durably.pause_schedule(${id})`
    : sql`select 1 from durably.resume_schedule(${id})`);
}

/** Creates one tick of the schedule now (durably.trigger_schedule, traced like every tick); returns its promise id. */
export function triggerSchedule(sql: Sql, id: string): Promise<string> {
  return callProcedure(() => tracedTrigger(sql, id));
}

export async function deleteSchedule(sql: Sql, id: string): Promise<void> {
  const [r] = await callProcedure(() => sql<{ deleted: boolean }[]>`select durably.delete_schedule(${id}) as deleted`);
  if (!r.deleted) throw new NotFoundError(`schedule ${JSON.stringify(id)} not found`);
}
