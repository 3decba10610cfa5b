// A browser tab on the console's event log with the live tail on, for bench/e2e.sh's
// hookyard-1-tail scenario: headless Chromium (Debian's package) driven by playwright-core from
// tests/console/node_modules (`bash scripts/browser.sh` installs both). It logs in with the
// token, opens #/events, waits until the tail is live, prints `tailing` and stays until SIGTERM;
// then it prints how many rows the tail put in the table, so a run shows the tab really tailed.
//
//   node bench/e2e/tail_tab.mjs http://127.0.0.1:18082/console/ TOKEN
import {createRequire} from 'node:module';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../../tests/console/package.json'));
const {chromium} = require('playwright-core');

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error('usage: node bench/e2e/tail_tab.mjs CONSOLE_URL TOKEN');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
  // this script's own handler closes the browser, after it has counted the rows
  handleSIGTERM: false,
  handleSIGINT: false,
});
const page = await browser.newPage({viewport: {width: 1280, height: 800}});
await page.goto(url);
await page.fill('#token', token);
await page.click('#login-submit');
await page.goto(url + '#/events');
await page.waitForSelector('#tail-status[data-status="live"]', {timeout: 15000});
console.log('tailing');
const stop = async () => {
  try {
    // the table keeps the newest 500 rows
    const rows = await page.evaluate(() => document.querySelectorAll('#events-body tr[data-event-id]').length);
    console.log(`rows shown: ${rows}`);
  } catch (e) {
    console.log(`rows shown: unknown (${e.message})`);
  }
  await browser.close().catch(() => {});
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
setInterval(() => {}, 1 << 30);
