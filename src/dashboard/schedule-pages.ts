/** The schedule list and a schedule's detail. */
import type { ScheduleListRow } from '../kysely.js';
import { badge, duration, html, json, time, type Html } from './html.js';
import { action, link, page, promiseLink, table, type View } from './layout.js';
import type { PromiseRow } from './queries.js';

function recurrence(s: ScheduleListRow): string {
  return s.cron ?? `every ${duration(Number(s.every_ms))}`;
}

function scheduleLink(view: View, id: string): Html {
  return html`<a href="${link(view, ['schedules', id])}">${id}</a>`;
}

export function scheduleList(view: View, rows: ScheduleListRow[]): Html {
  return page(view, 'Schedules', 'schedules', table(
    ['id', 'recurrence', 'timezone', 'function', 'group', 'paused', 'next run', 'last tick'],
    rows.map((s) => html`<tr><td>${scheduleLink(view, s.id)}</td><td><code>${recurrence(s)}</code></td><td>${s.timezone}</td>
      <td>${s.func}</td><td>${s.group_name}</td><td>${s.paused ? 'paused' : 'no'}</td><td>${time(s.next_run_at)}</td>
      <td>${promiseLink(view, s.last_promise_id)} ${badge(s.last_state)}</td></tr>`),
    'No schedules.'));
}

export function scheduleDetail(view: View, s: ScheduleListRow, next: Date[], ticks: PromiseRow[]): Html {
  const buttons = view.readOnly ? html`` : html`<section class="actions" aria-label="actions">
    ${s.paused ? action(view, ['schedules', s.id, 'resume'], 'Resume') : action(view, ['schedules', s.id, 'pause'], 'Pause')}
    ${action(view, ['schedules', s.id, 'trigger'], 'Trigger now')}
    ${action(view, ['schedules', s.id, 'delete'], 'Delete', '', `Delete schedule ${s.id}? Its past ticks are kept.`)}</section>`;
  return page(view, `Schedule ${s.id}`, 'schedules', html`${buttons}
    <dl class="facts">
      <dt>recurrence</dt><dd><code>${recurrence(s)}</code></dd><dt>timezone</dt><dd>${s.timezone}</dd>
      <dt>function</dt><dd>${s.func}</dd><dt>group</dt><dd>${s.group_name}</dd>
      <dt>overlap</dt><dd>${s.overlap}</dd>
      <dt>catch-up</dt><dd>${s.catchup}${s.catchup_window_ms !== null ? ` (window ${duration(Number(s.catchup_window_ms))})` : ''}</dd>
      <dt>paused</dt><dd>${s.paused ? 'yes' : 'no'}</dd><dt>id template</dt><dd><code>${s.id_template}</code></dd>
      <dt>tick timeout</dt><dd>${duration(Number(s.timeout_ms))}</dd><dt>ticks so far</dt><dd>${String(s.occurrence)}</dd>
      <dt>args</dt><dd>${json(s.args)}</dd>
    </dl>
    <h2>Next runs</h2>${s.paused ? html`<p class="muted">paused</p>` : html`<ol>${next.map((t) => html`<li>${time(t)}</li>`)}</ol>`}
    <h2>Recent ticks</h2>
    ${table(['promise', 'tick', 'state', 'created', 'took'], ticks.map((p) => html`<tr><td>${promiseLink(view, p.id)}</td>
      <td>${p.tags['durably:tick'] ?? ''}</td><td>${badge(p.state)}</td><td>${time(p.created_at)}</td>
      <td>${p.settled_at ? duration(p.settled_at.getTime() - p.created_at.getTime()) : 'running'}</td></tr>`), 'No ticks yet.')}`);
}
