#!/usr/bin/env node
// Runs the built CLI; in a source checkout without a build, runs the
// TypeScript source through tsx.
import { existsSync } from 'node:fs';
const built = new URL('../dist/cli.js', import.meta.url);
if (existsSync(built)) {
  await import(built.href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import(new URL('../src/cli.ts', import.meta.url).href);
}
