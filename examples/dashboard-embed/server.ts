/**
 * An application's own HTTP server with durably's dashboard mounted under
 * /admin/durably, behind a token. Everything else is the application's.
 *
 *   DATABASE_URL=... DASHBOARD_TOKEN=some-long-secret npx tsx examples/dashboard-embed/server.ts
 *   open http://127.0.0.1:3000/admin/durably/?token=some-long-secret
 */
import { createServer } from 'node:http';
import { dashboard } from '../../src/index.js';

const admin = dashboard({
  url: process.env.DATABASE_URL,
  basePath: '/admin/durably',
  token: process.env.DASHBOARD_TOKEN,
  readOnly: process.env.DASHBOARD_READ_ONLY === '1',
});

const server = createServer((req, res) => {
  if (req.url === '/admin/durably' || req.url?.startsWith('/admin/durably/')) return admin(req, res);
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end('the application\n');
});

server.listen(Number(process.env.PORT ?? 3000), '127.0.0.1', () => {
  const { port } = server.address() as { port: number };
  console.log(`listening: http://127.0.0.1:${port}/ (dashboard at /admin/durably/)`);
});

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    server.closeAllConnections();
    server.close(() => void admin.close().then(() => process.exit(0)));
  });
}
