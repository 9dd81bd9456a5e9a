/**
 * A worker process for `--worker-process`: runs the no-op drainer of one
 * system and reports over IPC (see lib/drain.ts childDrainer).
 */
import { localDrainer } from './lib/drain.js';
import type { DurablySetup, SystemName } from './lib/systems.js';

const { system, url, concurrency, setup } = JSON.parse(process.argv[2]) as { system: SystemName; url: string; concurrency: number; setup: DurablySetup };
const drainer = await localDrainer(system, url, concurrency, setup);
const send = (msg: unknown) => process.send!(msg);

process.on('message', async (msg: any) => {
  switch (msg.type) {
    case 'start':
      await drainer.start();
      send({ type: 'started' });
      break;
    case 'notify-at': {
      const n = msg.n as number;
      void drainer.reach(n, 600_000).then((ok) => { if (ok) send({ type: 'progress', ran: n }); });
      break;
    }
    case 'stop': {
      const check = await drainer.stop(msg.expected);
      send({ type: 'stopped', check });
      process.disconnect();
      setTimeout(() => process.exit(0), 200).unref();
      break;
    }
  }
});
send({ type: 'ready' });
