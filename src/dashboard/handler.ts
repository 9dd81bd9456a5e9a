/**
 * The dashboard as a Node request handler: authentication, cross-site
 * request protection, routing, and the answers (HTML pages, redirects after
 * actions, the event stream, the two assets).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Sql } from '../db.js';
import { DurablyError, InvalidArgumentError, NotFoundError } from '../errors.js';
import * as act from './actions.js';
import { html, type Html } from './html.js';
import { link, page, type View } from './layout.js';
import { LiveEvents } from './live.js';
import { confirmCancel, promiseDetail, promiseList } from './promise-pages.js';
import * as q from './queries.js';
import { scheduleDetail, scheduleList } from './schedule-pages.js';
import { overviewPage, tasksPage, workersPage } from './status-pages.js';

export interface HandlerOptions {
  sql: Sql;
  readOnly: boolean;
  token?: string;
  /** Mount path, e.g. `/admin/durably` ('' or '/' for the root). */
  basePath: string;
}

const ASSETS: Record<string, { type: string; body: string }> = Object.fromEntries(
  [['dashboard.css', 'text/css'], ['dashboard.js', 'text/javascript']].map(([name, type]) =>
    [name, { type: `${type}; charset=utf-8`, body: readFileSync(new URL(`./assets/${name}`, import.meta.url), 'utf8') }]));

const HEADERS = {
  'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'same-origin',
  'cache-control': 'no-store',
};

const MAX_BODY = 1 << 20;

class HttpError extends Error {
  constructor(readonly status: number, message: string) { super(message); }
}

export function createHandler(opts: HandlerOptions) {
  const base = opts.basePath.replace(/\/+$/, '');
  const secret = opts.token ?? randomBytes(32).toString('hex');
  const view: View = { base, readOnly: opts.readOnly, csrf: createHmac('sha256', secret).update('durably-csrf').digest('hex') };
  const live = new LiveEvents(opts.sql);
  const sql = opts.sql;

  function send(res: ServerResponse, status: number, body: Html | string, type = 'text/html; charset=utf-8', extra: Record<string, string> = {}) {
    res.writeHead(status, { ...HEADERS, 'content-type': type, ...extra });
    res.end(String(body));
  }

  function redirect(res: ServerResponse, to: string, extra: Record<string, string> = {}) {
    res.writeHead(303, { ...HEADERS, location: to, ...extra });
    res.end();
  }

  /** true when the request carries the token (header, cookie, or ?token= which also sets the cookie). */
  function authorized(req: IncomingMessage, url: URL, res: ServerResponse): boolean | 'redirected' {
    if (opts.token === undefined) return true;
    const matches = (given: string | undefined | null) => {
      if (!given) return false;
      const a = Buffer.from(given);
      const b = Buffer.from(opts.token!);
      return a.length === b.length && timingSafeEqual(a, b);
    };
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    const cookie = /(?:^|;\s*)durably_token=([^;]*)/.exec(req.headers.cookie ?? '')?.[1];
    if (matches(bearer) || matches(cookie && decodeURIComponent(cookie))) return true;
    if (req.method === 'GET' && matches(url.searchParams.get('token'))) {
      url.searchParams.delete('token');
      redirect(res, url.pathname + url.search, {
        'set-cookie': `durably_token=${encodeURIComponent(opts.token)}; HttpOnly; SameSite=Strict; Path=${base || '/'}`,
      });
      return 'redirected';
    }
    return false;
  }

  /** A POST must come from a page of this dashboard: same origin when the browser says, and the form's token. */
  function checkCrossSite(req: IncomingMessage, form: URLSearchParams) {
    const origin = req.headers.origin;
    if (origin && origin !== 'null') {
      let host: string;
      try { host = new URL(origin).host; } catch { host = ''; }
      if (host !== req.headers.host) throw new HttpError(403, 'cross-site request refused');
    } else if (origin === 'null' || req.headers['sec-fetch-site'] === 'cross-site') {
      throw new HttpError(403, 'cross-site request refused');
    }
    const given = form.get('csrf') ?? (req.headers['x-csrf-token'] as string | undefined) ?? '';
    const a = Buffer.from(given);
    const b = Buffer.from(view.csrf);
    if (a.length !== b.length || !timingSafeEqual(a, b)) throw new HttpError(403, 'missing or wrong form token (reload the page)');
  }

  async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
    let size = 0;
    const chunks: Buffer[] = [];
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > MAX_BODY) throw new HttpError(413, 'request body too large');
      chunks.push(chunk as Buffer);
    }
    return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
  }

  async function get(segments: string[], url: URL, res: ServerResponse) {
    const [section, id, extra] = segments;
    if (extra !== undefined) throw new HttpError(404, 'no such page');
    switch (section ?? '') {
      case '':
        if (id !== undefined) break;
        return send(res, 200, overviewPage(view, await q.overview(sql)));
      case 'promises': {
        if (id === undefined) {
          const filter = parseFilter(url.searchParams);
          const before = optionalInt(url.searchParams.get('before'), 'before');
          const canceled = optionalInt(url.searchParams.get('canceled'), 'canceled', 0);
          return send(res, 200, promiseList(view, filter, await q.listPromises(sql, filter, before), before, canceled));
        }
        const p = await q.getPromise(sql, id);
        if (!p) throw new HttpError(404, `promise ${JSON.stringify(id)} not found`);
        const nodes = await q.callTree(sql, id);
        const group = p.group_name ?? (p.tags['durably:schedule'] ? (await q.getSchedule(sql, p.tags['durably:schedule']))?.group_name : undefined);
        return send(res, 200, promiseDetail(view, p, nodes, group ?? 'default'));
      }
      case 'bulk-cancel': {
        if (id !== undefined) break;
        const filter = parseFilter(url.searchParams);
        return send(res, 200, confirmCancel(view, filter, await q.countPending(sql, filter), q.COUNT_CAP));
      }
      case 'schedules': {
        if (id === undefined) return send(res, 200, scheduleList(view, await q.schedules(sql)));
        const s = await q.getSchedule(sql, id);
        if (!s) throw new HttpError(404, `schedule ${JSON.stringify(id)} not found`);
        const [next, ticks] = await Promise.all([s.paused ? [] : q.schedulePreview(sql, id, 5), q.recentTicks(sql, id)]);
        return send(res, 200, scheduleDetail(view, s, next, ticks));
      }
      case 'workers':
        if (id !== undefined) break;
        return send(res, 200, workersPage(view, await q.workers(sql)));
      case 'tasks':
        if (id !== undefined) break;
        return send(res, 200, tasksPage(view, ...(await Promise.all([q.taskGroups(sql), q.tasks(sql)]))));
      case 'events':
        if (id !== undefined) break;
        return live.subscribe(res);
      case 'assets': {
        const asset = id === undefined ? undefined : ASSETS[id];
        if (!asset) break;
        res.writeHead(200, { ...HEADERS, 'content-type': asset.type, 'cache-control': 'no-cache' });
        res.end(asset.body);
        return;
      }
    }
    throw new HttpError(404, 'no such page');
  }

  async function post(segments: string[], req: IncomingMessage, res: ServerResponse) {
    if (opts.readOnly) throw new HttpError(403, 'this dashboard is read-only');
    const form = await readForm(req);
    checkCrossSite(req, form);
    const [section, id, verb, extra] = segments;
    if (extra !== undefined) throw new HttpError(404, 'no such action');
    if (section === 'bulk-cancel' && id === undefined) {
      const filter = parseFilter(form);
      const canceled = await act.cancelMatching(sql, filter);
      return redirect(res, link(view, ['promises'], { ...Object.fromEntries(form), csrf: undefined, expected: undefined, canceled }));
    }
    if (id === undefined) throw new HttpError(404, 'no such action');
    const back = link(view, [section, id]);
    if (section === 'promises') {
      switch (verb) {
        case 'cancel': await act.cancel(sql, id); return redirect(res, back);
        case 'resolve': await act.resolve(sql, id, form.get('value') ?? ''); return redirect(res, back);
        case 'reject': await act.reject(sql, id, form.get('message') ?? ''); return redirect(res, back);
        case 'rerun': return redirect(res, link(view, ['promises', await act.rerun(sql, id, form.get('group') || 'default')]));
      }
    } else if (section === 'schedules') {
      switch (verb) {
        case 'pause': await act.pauseSchedule(sql, id, true); return redirect(res, back);
        case 'resume': await act.pauseSchedule(sql, id, false); return redirect(res, back);
        case 'trigger': await act.triggerSchedule(sql, id); return redirect(res, back);
        case 'delete': await act.deleteSchedule(sql, id); return redirect(res, link(view, ['schedules']));
      }
    }
    throw new HttpError(404, 'no such action');
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://dashboard');
    try {
      const auth = authorized(req, url, res);
      if (auth === 'redirected') return;
      if (!auth) return send(res, 401, '401 unauthorized: this dashboard needs its token', 'text/plain; charset=utf-8',
        { 'www-authenticate': 'Bearer realm="durably"' });
      if (!(url.pathname === base || url.pathname.startsWith(`${base}/`))) throw new HttpError(404, 'no such page');
      const segments = url.pathname.slice(base.length).split('/').filter((s) => s !== '').map((s) => {
        try { return decodeURIComponent(s); } catch { throw new HttpError(400, 'malformed URL'); }
      });
      if (req.method === 'GET' || req.method === 'HEAD') return await get(segments, url, res);
      if (req.method === 'POST') return await post(segments, req, res);
      throw new HttpError(405, `method ${req.method} not allowed`);
    } catch (err) {
      const status = err instanceof HttpError ? err.status
        : err instanceof InvalidArgumentError ? 400
        : err instanceof NotFoundError ? 404
        : err instanceof DurablyError ? 409 : 500;
      const message = status === 500 ? 'internal error (see the server log)' : (err as Error).message;
      if (status === 500) console.error('durably dashboard:', err);
      if (res.headersSent) return void res.end();
      send(res, status, page(view, `Error ${status}`, '', html`<p role="alert">${message}</p><p><a href="${view.base}/">Overview</a></p>`));
    }
  }

  return { handle, close: () => live.close() };
}

function optionalInt(text: string | null, what: string, min = 1): number | undefined {
  if (text === null || text === '') return undefined;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`invalid ${what} ${JSON.stringify(text)}: an integer from ${min}`);
  return n;
}

function optionalDate(text: string | null, what: string): Date | undefined {
  if (text === null || text.trim() === '') return undefined;
  const d = new Date(text.trim());
  if (Number.isNaN(d.getTime())) throw new InvalidArgumentError(`invalid ${what} ${JSON.stringify(text)}: an ISO-8601 time such as 2026-01-31T12:00Z`);
  return d;
}

/** The promise list's filter from its query string (or a form), each value checked. */
export function parseFilter(params: URLSearchParams): q.PromiseFilter {
  const text = (name: string) => params.get(name)?.trim() || undefined;
  const state = text('state');
  if (state !== undefined && !q.STATES.includes(state as never)) {
    throw new InvalidArgumentError(`invalid state ${JSON.stringify(state)}: ${q.STATES.join(', ')}`);
  }
  const kind = text('kind');
  if (kind !== undefined && !q.KINDS.includes(kind as never)) {
    throw new InvalidArgumentError(`invalid kind ${JSON.stringify(kind)}: ${q.KINDS.join(', ')}`);
  }
  const tagText = text('tag');
  let tag: q.PromiseFilter['tag'];
  if (tagText !== undefined) {
    const at = tagText.indexOf('=');
    if (at < 1) throw new InvalidArgumentError(`invalid tag filter ${JSON.stringify(tagText)}: key=value`);
    tag = { key: tagText.slice(0, at), value: tagText.slice(at + 1) };
  }
  return {
    state: state as q.PromiseFilter['state'], kind: kind as q.PromiseFilter['kind'], tag,
    func: text('func'), group: text('group'), pattern: text('pattern'),
    from: optionalDate(params.get('from'), 'from'), to: optionalDate(params.get('to'), 'to'),
    all: params.get('all') === '1',
  };
}
