/** The promise list, a promise's detail with its call tree, and the bulk-cancel confirmation. */
import { badge, duration, html, json, time, type Html } from './html.js';
import { action, link, page, promiseLink, table, type View } from './layout.js';
import { KINDS, SCAN_WINDOW, STATES, type PromiseFilter, type PromisePage, type PromiseRow, type TreeNode } from './queries.js';

/** The filter as URL query parameters (the same names the form uses). */
export function filterQuery(f: PromiseFilter): Record<string, string | undefined> {
  return {
    state: f.state, func: f.func, group: f.group, kind: f.kind, pattern: f.pattern,
    tag: f.tag ? `${f.tag.key}=${f.tag.value}` : undefined,
    from: f.from?.toISOString(), to: f.to?.toISOString(), all: f.all ? '1' : undefined,
  };
}

function filterForm(view: View, f: PromiseFilter): Html {
  const q = filterQuery(f);
  const input = (name: string, label: string, placeholder = '') =>
    html`<label>${label} <input name="${name}" value="${q[name] ?? ''}" placeholder="${placeholder}"></label>`;
  const select = (name: string, label: string, options: readonly string[]) =>
    html`<label>${label} <select name="${name}"><option value="">any</option>${options.map((o) =>
      html`<option${o === q[name] ? html` selected` : ''}>${o}</option>`)}</select></label>`;
  return html`<form method="get" action="${link(view, ['promises'])}" class="filters" role="search">
    ${select('state', 'State', STATES)} ${input('func', 'Function')} ${input('group', 'Group (pending)')}
    ${input('pattern', 'Id pattern', 'job-*')} ${input('tag', 'Tag', 'key=value')}
    ${select('kind', 'Kind', KINDS)}
    ${input('from', 'Created from', '2026-01-01T00:00Z')} ${input('to', 'Created before', '2026-01-02T00:00Z')}
    <label><input type="checkbox" name="all" value="1"${f.all ? html` checked` : ''}> steps and children too</label>
    <button type="submit">Filter</button> <a href="${link(view, ['promises'])}">Clear</a></form>`;
}

function age(row: PromiseRow): string {
  return duration((row.settled_at ?? new Date()).getTime() - row.created_at.getTime());
}

function promiseRows(view: View, rows: PromiseRow[]): Html[] {
  return rows.map((r) => html`<tr><td>${promiseLink(view, r.id)}</td><td>${badge(r.state)}</td><td>${r.kind}</td>
    <td>${r.func ?? ''}</td><td>${r.group_name ?? ''}${r.task_state ? html` <span class="muted">(${r.task_state})</span>` : ''}</td>
    <td>${time(r.created_at)}</td><td>${age(r)}</td></tr>`);
}

export function promiseList(view: View, f: PromiseFilter, result: PromisePage, before?: number, canceled?: number): Html {
  const q = filterQuery(f);
  const older = result.next === null ? html``
    : html`<a rel="next" href="${link(view, ['promises'], { ...q, before: result.next })}">${result.windowEnded ? 'Search older promises' : 'Older'} →</a>`;
  const bulk = view.readOnly || f.state && f.state !== 'pending' ? html``
    : html`<a class="button" href="${link(view, ['bulk-cancel'], q)}">Cancel all matching pending…</a>`;
  return page(view, 'Promises', 'promises', html`${canceled !== undefined ? html`<p role="status" class="notice">Canceled ${canceled}.</p>` : ''}
    ${filterForm(view, f)}
    <div class="toolbar">${before ? html`<a href="${link(view, ['promises'], q)}">← Newest</a>` : ''} ${older} ${bulk}</div>
    ${result.windowEnded ? html`<p class="muted">Looked at ${SCAN_WINDOW.toLocaleString('en')} promises for this page; older ones may match.</p>` : ''}
    ${table(['id', 'state', 'kind', 'function', 'group (task)', 'created', 'took'], promiseRows(view, result.rows), 'No promise matches.')}
    <div class="toolbar">${older}</div>`);
}

export function confirmCancel(view: View, f: PromiseFilter, count: number, cap: number): Html {
  const q = filterQuery(f);
  const fields = html`${Object.entries(q).map(([k, v]) => v === undefined ? '' : html`<input type="hidden" name="${k}" value="${v}">`)}
    <input type="hidden" name="expected" value="${count}">`;
  return page(view, 'Cancel matching promises', 'promises', html`
    <p>${count >= cap ? `At least ${cap}` : count} pending promise${count === 1 ? '' : 's'} match this filter${count >= cap ? ` (the first ${cap} are canceled)` : ''}.
       Canceling one also cancels its pending steps and children.</p>
    <dl class="facts">${Object.entries(q).filter(([, v]) => v !== undefined).map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>
    ${count === 0 ? html`<p>Nothing to cancel.</p>` : action(view, ['bulk-cancel'], `Cancel ${count} promise${count === 1 ? '' : 's'}`, fields)}
    <p><a href="${link(view, ['promises'], q)}">Back to the list</a></p>`);
}

function errorView(value: unknown): Html {
  const e = (value ?? {}) as { name?: unknown; message?: unknown; stack?: unknown; attempt?: unknown; code?: unknown };
  return html`<dl class="facts"><dt>name</dt><dd>${String(e.name ?? '')}</dd><dt>message</dt><dd>${String(e.message ?? '')}</dd>
    ${e.code !== undefined ? html`<dt>code</dt><dd>${String(e.code)}</dd>` : ''}
    ${e.attempt !== undefined ? html`<dt>attempt</dt><dd>${String(e.attempt)}</dd>` : ''}</dl>
    ${typeof e.stack === 'string' ? html`<details><summary>stack</summary><pre>${e.stack}</pre></details>` : ''}`;
}

/** Bars on one time axis, from the root's creation to the latest settlement (or now). */
function timeline(nodes: TreeNode[]): Html {
  const now = Date.now();
  const start = Math.min(...nodes.map((n) => n.created_at.getTime()));
  const end = Math.max(start + 1, ...nodes.map((n) => (n.settled_at?.getTime() ?? now)));
  const span = end - start;
  return html`<div class="timeline" role="list" aria-label="timeline">${nodes.map((n) => {
    const from = n.created_at.getTime() - start;
    const to = (n.settled_at?.getTime() ?? now) - start;
    const label = `${n.id}: ${n.kind} ${n.func ?? ''} ${n.state}, started +${duration(from)}, took ${duration(to - from)}`;
    return html`<div class="tl-row" role="listitem" title="${label}"><span class="tl-name" style="padding-left:${n.depth}em">${n.func ?? n.kind}</span>
      <span class="tl-track"><span class="tl-bar state-${n.state}" style="left:${(100 * from / span).toFixed(2)}%;width:${(100 * (to - from) / span).toFixed(2)}%"></span></span>
      <span class="tl-time">+${duration(from)} · ${duration(to - from)}</span></div>`;
  })}</div>`;
}

function tree(view: View, nodes: TreeNode[]): Html {
  return table(['call tree', 'kind', 'function', 'state', 'created', 'settled', 'took'], nodes.map((n) => html`<tr>
    <td style="padding-left:${0.5 + n.depth * 1.5}em">${n.depth ? '└ ' : ''}${promiseLink(view, n.id)}</td><td>${n.kind}</td><td>${n.func ?? ''}</td>
    <td>${badge(n.state)}</td><td>${time(n.created_at)}</td><td>${time(n.settled_at)}</td>
    <td>${n.settled_at ? duration(n.settled_at.getTime() - n.created_at.getTime()) : 'running'}</td></tr>`));
}

function actions(view: View, p: PromiseRow, rerunGroup: string): Html {
  if (view.readOnly) return html``;
  const buttons: Html[] = [];
  if (p.state === 'pending') {
    buttons.push(action(view, ['promises', p.id, 'cancel'], 'Cancel', '', 'Cancel this promise and its pending descendants?'));
    if (p.kind === 'external') {
      buttons.push(action(view, ['promises', p.id, 'resolve'], 'Resolve',
        html`<label>Value (JSON) <textarea name="value" rows="2">null</textarea></label>`));
      buttons.push(action(view, ['promises', p.id, 'reject'], 'Reject',
        html`<label>Message <input name="message" value="rejected"></label>`));
    }
  } else if (p.kind === 'invoke') {
    buttons.push(action(view, ['promises', p.id, 'rerun'], 'Re-run',
      html`<label>Group <input name="group" value="${rerunGroup}" required></label>`));
  }
  return html`<section class="actions" aria-label="actions">${buttons}</section>`;
}

export function promiseDetail(view: View, p: PromiseRow, nodes: TreeNode[], rerunGroup: string): Html {
  const children = nodes.filter((n) => n.parent_id === p.id);
  const timeoutLeft = p.state === 'pending' ? ` (in ${duration(p.timeout_at.getTime() - Date.now())})` : '';
  const rejected = p.state.startsWith('rejected');
  const attempts = p.attempt ?? ((p.value as { attempt?: number } | null)?.attempt ?? null);
  return page(view, `Promise ${p.id}`, 'promises', html`
    ${actions(view, p, rerunGroup)}
    <dl class="facts">
      <dt>state</dt><dd>${badge(p.state)}</dd><dt>kind</dt><dd>${p.kind}</dd>
      <dt>function</dt><dd>${p.func ?? '—'}</dd><dt>group</dt><dd>${p.group_name ?? '—'}${p.task_state ? ` (task ${p.task_state})` : ''}</dd>
      <dt>attempts</dt><dd>${attempts ?? '—'}</dd>
      <dt>created</dt><dd>${time(p.created_at)}</dd><dt>settled</dt><dd>${time(p.settled_at)}</dd>
      <dt>took</dt><dd>${duration((p.settled_at ?? new Date()).getTime() - p.created_at.getTime())}</dd>
      <dt>timeout</dt><dd>${time(p.timeout_at)}${timeoutLeft}</dd>
      <dt>parent</dt><dd>${promiseLink(view, p.parent_id)}</dd><dt>root</dt><dd>${promiseLink(view, p.root_id)}</dd>
      <dt>tags</dt><dd>${Object.keys(p.tags ?? {}).length ? json(p.tags) : '—'}</dd>
    </dl>
    <h2>Arguments</h2>${json(p.args)}
    <h2>${p.state === 'pending' ? 'Result' : rejected ? 'Error' : 'Result'}</h2>
    ${p.state === 'pending' ? html`<p class="muted">pending</p>` : rejected ? errorView(p.value) : json(p.value)}
    ${p.last_error ? html`<h2>Last error (will be retried)</h2>${errorView(p.last_error)}` : ''}
    <h2>Timeline</h2>${timeline(nodes)}
    <h2>Call tree</h2>${tree(view, nodes)}
    <p>${children.length} direct child${children.length === 1 ? '' : 'ren'}</p>`);
}
