import { resolve } from 'node:path';
import { startEmbedded } from './embedded.js';
import { defaultUrl } from './db.js';

/**
 * DATABASE_URL when set; otherwise an embedded PostgreSQL with its data under
 * `.durably/pg` of the current directory, stopped by the returned `stop`.
 */
export async function databaseForDev(log: (m: string) => void = () => {}): Promise<{ url: string; stop(): Promise<void> }> {
  const url = defaultUrl();
  if (url) return { url, stop: async () => {} };
  log('no DATABASE_URL: starting an embedded PostgreSQL (data in .durably/pg)');
  return startEmbedded(resolve('.durably/pg'));
}
