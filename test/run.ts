/**
 * The test command (`npm test`). Uses DATABASE_URL when set; otherwise starts
 * an embedded PostgreSQL under .durably/test-pg. Migrates a template database
 * once; each test file copies it (test/helpers/db.ts). Extra arguments are
 * passed to `node --test` (e.g. a file list).
 */
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { connect } from '../src/db.js';
import { migrate } from '../src/migrate.js';
import { startEmbedded, type Embedded } from '../src/embedded.js';
import { databaseUrl } from './helpers/url.js';

let embedded: Embedded | undefined;
let adminUrl = process.env.DATABASE_URL;
if (!adminUrl) {
  embedded = await startEmbedded(`.durably/test-pg-${process.pid}`, { persistent: false });
  adminUrl = embedded.url;
  console.log(`# embedded PostgreSQL at ${adminUrl}`);
} else {
  console.log(`# PostgreSQL from DATABASE_URL`);
}

const template = `durably_tpl_${randomBytes(4).toString('hex')}`;
const admin = connect(adminUrl, { max: 1 });
let code = 1;
try {
  await admin.unsafe(`create database ${template}`);
  const tpl = connect(databaseUrl(adminUrl, template), { max: 1 });
  await migrate(tpl);
  await tpl.end();

  const files = process.argv.slice(2).length
    ? process.argv.slice(2)
    : readdirSync('test').filter((f) => f.endsWith('.test.ts')).sort().map((f) => `test/${f}`);
  code = await new Promise<number>((ok) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=2', ...files], {
      stdio: 'inherit',
      env: { ...process.env, DURABLY_TEST_ADMIN_URL: adminUrl, DURABLY_TEST_TEMPLATE: template },
    });
    child.on('exit', (c, signal) => ok(c ?? (signal ? 1 : 0)));
  });
} finally {
  await admin.unsafe(`drop database if exists ${template} with (force)`).catch(() => {});
  await admin.end();
  await embedded?.stop();
}
process.exit(code);
