/**
 * Headless Chromium (the Debian package) driven by playwright-core. Missing
 * Chromium fails the test in CI (CI=true) and skips it elsewhere, saying why.
 */
import { existsSync, mkdirSync } from 'node:fs';
import type { TestContext } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const SCREENSHOTS = '.durably/screenshots';

let browser: Promise<Browser> | undefined;

/** The shared browser of this test file, or undefined (test skipped) when Chromium is missing outside CI. */
export async function launchBrowser(t: TestContext): Promise<Browser | undefined> {
  if (!existsSync(CHROMIUM)) {
    const why = `Chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`;
    if (process.env.CI) throw new Error(why);
    t.skip(why);
    return undefined;
  }
  if (!browser) {
    browser = chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync'],
    });
  }
  return browser;
}

/** Closes the shared browser (register with `after` at the top of the test file). */
export async function closeBrowser(): Promise<void> {
  await (await browser?.catch(() => undefined))?.close();
}

/** A full-page screenshot under the git-ignored .durably/screenshots/. */
export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: `${SCREENSHOTS}/${name}.png`, fullPage: true });
}
