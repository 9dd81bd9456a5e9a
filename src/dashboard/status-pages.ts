/** The overview, the workers and the tasks pages. */
import type { TaskListRow, WorkerStatusRow } from '../kysely.js';
import { badge, duration, html, time, type Html } from './html.js';
import { link, page, promiseLink, table, type View } from './layout.js';
import { COUNT_CAP, SCAN_WINDOW, STATES, type Overview } from './queries.js';

const capped = (n: number) => (n >= COUNT_CAP ? `${COUNT_CAP}+` : String(n));

/** Completed and failed invocations per minute over the last hour, as stacked SVG bars. */
function chart(perMinute: Overview['perMinute']): Html {
  const now = Math.floor(Date.now() / 60_000);
  const byMinute = new Map(perMinute.map((m) => [Math.floor(m.minute.getTime() / 60_000), m]));
  const minutes = Array.from({ length: 60 }, (_, i) => now - 59 + i);
  const max = Math.max(1, ...perMinute.map((m) => m.resolved + m.failed));
  const total = perMinute.reduce((s, m) => ({ ok: s.ok + m.resolved, failed: s.failed + m.failed }), { ok: 0, failed: 0 });
  const bars = minutes.map((m, i) => {
    const v = byMinute.get(m);
    if (!v) return html``;
    const ok = (100 * v.resolved) / max;
    const bad = (100 * v.failed) / max;
    return html`<g><title>${new Date(m * 60_000).toISOString().slice(11, 16)} UTC: ${v.resolved} completed, ${v.failed} failed</title>
      <rect class="ok" x="${i * 10}" y="${100 - ok}" width="8" height="${ok}"></rect>
      <rect class="failed" x="${i * 10}" y="${100 - ok - bad}" width="8" height="${bad}"></rect></g>`;
  });
  return html`<figure class="chart"><svg viewBox="0 0 600 100" preserveAspectRatio="none" role="img"
    aria-label="Invocations per minute over the last hour: ${total.ok} completed, ${total.failed} failed">${bars}</svg>
    <figcaption>Per minute, last hour (peak ${max}): <span class="key ok"></span> completed ${total.ok}
    · <span class="key failed"></span> failed ${total.failed}</figcaption></figure>`;
}

export function overviewPage(view: View, o: Overview): Html {
  const funcs = [...new Set(o.byFunction.map((r) => r.func))];
  const count = (func: string, state: string) => o.byFunction.find((r) => r.func === func && r.state === state)?.n ?? 0;
  const now = Date.now();
  return page(view, 'Overview', '', html`
    <section class="cards">
      <div class="card"><span class="n">${o.workers.active}</span> workers alive${o.workers.stale ? html`, <span class="warn">${o.workers.stale} stale</span>` : ''}</div>
      ${o.groups.map((g) => html`<div class="card"><span class="n">${capped(g.ready)}</span> ready in <strong>${g.group_name}</strong>
        <br><span class="muted">oldest ready ${g.oldest_ready ? duration(Math.max(0, now - g.oldest_ready.getTime())) : '—'}</span></div>`)}
    </section>
    <h2>Completed and failed</h2>${chart(o.perMinute)}
    <h2>Invocations by function and state</h2>
    ${o.windowed ? html`<p class="muted">Among the newest ${SCAN_WINDOW.toLocaleString('en')} promises.</p>` : ''}
    ${table(['function', ...STATES.map((s) => s.replace('rejected_', ''))], funcs.map((f) => html`<tr><td>
      <a href="${link(view, ['promises'], { func: f })}">${f}</a></td>${STATES.map((s) => {
        const n = count(f, s);
        return html`<td>${n ? html`<a href="${link(view, ['promises'], { func: f, state: s })}">${n}</a>` : '0'}</td>`;
      })}</tr>`), 'No invocations yet.')}
    <h2>Tasks per group</h2>${groupsTable(view, o.groups)}
    <h2>Recent failures</h2>
    ${table(['id', 'function', 'error', 'settled'], o.failures.map((p) => html`<tr><td>${promiseLink(view, p.id)}</td><td>${p.func ?? ''}</td>
      <td>${String((p.value as { message?: unknown } | null)?.message ?? p.state)}</td><td>${time(p.settled_at)}</td></tr>`), 'No failures.')}`);
}

function groupsTable(view: View, groups: Overview['groups']): Html {
  const now = Date.now();
  return table(['group', 'ready', 'claimed', 'suspended', 'oldest ready'], groups.map((g) => html`<tr>
    <td><a href="${link(view, ['promises'], { group: g.group_name, state: 'pending' })}">${g.group_name}</a></td>
    <td>${capped(g.ready)}</td><td>${g.claimed}</td><td>${capped(g.suspended)}</td>
    <td>${g.oldest_ready ? duration(Math.max(0, now - g.oldest_ready.getTime())) : '—'}</td></tr>`), 'No tasks.');
}

export function workersPage(view: View, workers: (WorkerStatusRow & { held: number })[]): Html {
  return page(view, 'Workers', 'workers', table(
    ['worker', 'group', 'host', 'pid', 'functions', 'last heartbeat', 'status', 'tasks held'],
    workers.map((w) => html`<tr><td><code>${w.id}</code></td><td>${w.group_name}</td><td>${w.host}</td><td>${w.pid}</td>
      <td>${w.functions.join(', ')}</td><td>${time(w.heartbeat_at)}</td><td>${badge(w.status)}</td><td>${w.held}</td></tr>`),
    'No workers have registered.'));
}

export function tasksPage(view: View, groups: Overview['groups'], tasks: TaskListRow[]): Html {
  return page(view, 'Tasks', 'tasks', html`${groupsTable(view, groups)}
    <h2>Next tasks</h2>
    ${table(['promise', 'function', 'group', 'state', 'available at', 'attempt', 'worker'], tasks.map((t) => html`<tr>
      <td>${promiseLink(view, t.promise_id)}</td><td>${t.func ?? ''}</td><td>${t.group_name}</td><td>${badge(t.state)}</td>
      <td>${time(t.available_at)}</td><td>${t.attempt}</td><td><code>${t.worker_id ?? ''}</code></td></tr>`), 'No tasks.')}`);
}
