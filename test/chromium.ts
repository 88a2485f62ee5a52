import { existsSync } from 'node:fs'
import { chromium, type Browser } from 'playwright-core'
import type { Test } from 'tap'

/** Debian's Chromium (package chromium), which playwright-core drives: Playwright's own browser downloads fail on this kind of machine. */
export const CHROMIUM_PATH = '/usr/bin/chromium'

// What is known to work here: without the background-networking flags Chromium keeps trying
// Google's hosts, and this machine's closed network refuses each attempt. `headless: true` adds
// --headless; each launch gets a new empty --user-data-dir from playwright-core (removed on close).
const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync'
]

/**
 * Headless Chromium for this test file, closed when it ends. Without Chromium the test fails (it
 * never skips): the page it proves would go unproven.
 */
export async function launchChromium (t: Pick<Test, 'teardown'>): Promise<Browser> {
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(`Chromium is not installed at ${CHROMIUM_PATH}, and the browser tests need it. Install Debian's package: apt-get install -y chromium (.ci/run does this when it is missing).`)
  }
  const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: FLAGS })
  t.teardown(() => browser.close())
  return browser
}
