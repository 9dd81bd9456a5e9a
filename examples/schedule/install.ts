/**
 * Installs the `daily_report` schedule (seed 000/001): every minute by
 * default, or the cron expression in CRON (`CRON='* * * * * *'` ticks every
 * second). Re-running it with the same definition changes nothing; with
 * another one it fails unless REPLACE=1.
 *
 *   DATABASE_URL=... npx tsx examples/schedule/install.ts
 */
import { Durably, NotFoundError } from '../../src/index.js';

const cron = process.env.CRON ?? '* * * * *';
const durably = new Durably({ url: process.env.DATABASE_URL, log: () => {} });
try {
  const existed = await durably.schedules.get('daily_report').then(() => true, (e) => {
    if (e instanceof NotFoundError) return false;
    throw e;
  });
  const schedule = await durably.schedule('daily_report', cron, 'daily_report', 'eu', durably.options({
    group: 'reports',
    catchup: 'all',             // after downtime, run every missed tick, in order
    overlap: 'always_start',
    replace: process.env.REPLACE === '1',
  }));
  const s = await schedule.get();
  console.log(`${existed ? 'already installed' : 'installed'}: daily_report '${s.cron}' (${s.timezone}) on group ${s.group_name}, catch-up ${s.catchup}`);
  console.log(`next runs: ${(await schedule.next(3)).map((t) => t.toISOString()).join(', ')}`);
} finally {
  await durably.stop();
}
