/** The page frame, links and action forms shared by every page. */
import { html, type Html } from './html.js';

/** What every page needs to know about the request it answers. */
export interface View {
  /** The mount path, without a trailing slash ('' at the root). */
  base: string;
  readOnly: boolean;
  /** The token action forms carry (cross-site request protection). */
  csrf: string;
}

/** A dashboard URL: path segments are encoded, so ids with `/`, `?` or `#` stay one segment. */
export function link(view: View, segments: string[], query?: Record<string, string | number | undefined>): string {
  const path = segments.map(encodeURIComponent).join('/');
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== '') params.set(k, String(v));
  const qs = params.toString();
  return `${view.base}/${path}${qs ? `?${qs}` : ''}`;
}

export function promiseLink(view: View, id: string | null): Html {
  if (!id) return html`<span class="muted">—</span>`;
  return html`<a href="${link(view, ['promises', id])}">${id}</a>`;
}

/** A POST form with one button, named by what it does; nothing in read-only mode. */
export function action(view: View, segments: string[], label: string, fields: Html | string = '', confirm?: string): Html {
  if (view.readOnly) return html``;
  return html`<form method="post" action="${link(view, segments)}" class="action"${confirm ? html` data-confirm="${confirm}"` : ''}>
    <input type="hidden" name="csrf" value="${view.csrf}">${fields}<button type="submit">${label}</button></form>`;
}

const NAV: [string, string][] = [['', 'Overview'], ['promises', 'Promises'], ['schedules', 'Schedules'], ['workers', 'Workers'], ['tasks', 'Tasks']];

/** A whole page. The main element is what live refresh replaces. */
export function page(view: View, title: string, section: string, body: Html): Html {
  return html`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} · durably</title>
<link rel="stylesheet" href="${view.base}/assets/dashboard.css">
<script src="${view.base}/assets/dashboard.js" defer></script>
</head><body data-events="${view.base}/events">
<header><nav aria-label="sections"><span class="brand">durably</span>
${NAV.map(([path, label]) => html`<a href="${view.base}/${path}"${path === section ? html` aria-current="page"` : ''}>${label}</a>`)}
<span class="live" role="status" aria-live="polite"></span></nav></header>
<main id="main"><h1>${title}</h1>
${body}</main></body></html>`;
}

/** A table with a header row; `empty` when there are no rows. */
export function table(headers: string[], rows: Html[], empty = 'none'): Html {
  if (rows.length === 0) return html`<p class="muted">${empty}</p>`;
  return html`<table><thead><tr>${headers.map((h) => html`<th scope="col">${h}</th>`)}</tr></thead><tbody>${rows}</tbody></table>`;
}
