// The admin console in a real browser (Chromium through playwright-core), against a real gateway
// started by tests/it/console.rs, which posts the events this script reads and checks what its
// receivers got afterwards. Run by that test; by hand:
//
//   CONSOLE_URL=http://127.0.0.1:PORT/console/ ADMIN_TOKEN=... INGRESS_URL=http://127.0.0.1:PORT \
//   SHOTS_DIR=target/console-shots EVENT_ID=evt_... node tests/console/console.test.mjs
//
// Every step prints `ok <step>` or `FAIL <step>: why`; the first failure ends the run (later steps
// build on earlier ones) with a screenshot `failure.png` and exit code 1. A hard timeout bounds
// the whole run. A page-side `alert`/`confirm` dialog, an uncaught page error and a CSP violation
// all fail the run: the console's own confirmations are in-page `<dialog>`s.

import {chromium} from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const TIMEOUT_MS = Number(process.env.CONSOLE_TEST_TIMEOUT_MS || 120000);
const WAIT_MS = 15000;

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`FAIL setup: the environment variable ${name} is not set`);
    process.exit(2);
  }
  return v;
}
const list = (name) => (process.env[name] || '').split(',').map((s) => s.trim()).filter(Boolean);

const CONSOLE_URL = need('CONSOLE_URL');
const ADMIN_TOKEN = need('ADMIN_TOKEN');
const INGRESS_URL = need('INGRESS_URL');
const SHOTS_DIR = need('SHOTS_DIR');
const EVENT_ID = need('EVENT_ID');
const ROUTE_MATCHED = process.env.ROUTE_MATCHED || 'orders';
const ROUTE_UNMATCHED = process.env.ROUTE_UNMATCHED || 'flaky-things';
const DEAD_DESTINATION = process.env.DEAD_DESTINATION || 'flaky';
const DEAD_EVENT_IDS = list('DEAD_EVENT_IDS');
const PAUSE_DESTINATION = process.env.PAUSE_DESTINATION || 'other';
const SHOP_EVENT_IDS = list('SHOP_EVENT_IDS');
const XSS_EVENT_IDS = list('XSS_EVENT_IDS');
const ADMIN_URL = new URL(CONSOLE_URL).origin;
const XSS_MARKERS = ['<script>window.__xss=1</script>', '"><img src=x onerror="window.__xss=1">'];

fs.mkdirSync(SHOTS_DIR, {recursive: true});

let current = 'setup';
const passed = [];
const hard = setTimeout(() => {
  console.error(`FAIL ${current}: the browser test did not finish within ${TIMEOUT_MS} ms`);
  process.exit(3);
}, TIMEOUT_MS);

// ---------------------------------------------------------------------------------------------
// helpers

class Failure extends Error {}
function check(cond, message) {
  if (!cond) throw new Failure(message);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; fails with `what` (and the last value) after `ms`. */
async function until(what, fn, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Failure(`waited ${ms} ms for ${what}; last saw: ${JSON.stringify(last)}`);
    await sleep(150);
  }
}

async function adminApi(p, init = {}) {
  const res = await fetch(ADMIN_URL + p, {...init, headers: {Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json', ...(init.headers || {})}});
  const text = await res.text();
  if (!res.ok) throw new Error(`${init.method || 'GET'} ${p}: ${res.status} ${text}`);
  return JSON.parse(text);
}

async function post(pathname, headers, body) {
  const res = await fetch(INGRESS_URL + pathname, {method: 'POST', headers, body});
  const text = await res.text();
  check(res.status === 202, `POST ${pathname}: expected 202, got ${res.status} ${text}`);
  return JSON.parse(text).id;
}

// ---------------------------------------------------------------------------------------------
// the browser

const browser = await chromium.launch({executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox']});
const context = await browser.newContext({viewport: {width: 1280, height: 800}});
const page = await context.newPage();
page.setDefaultTimeout(WAIT_MS);

const dialogs = [];
const pageErrors = [];
const cspConsole = [];
page.on('dialog', async (d) => {
  dialogs.push(`${d.type()}: ${d.message()}`);
  await d.dismiss().catch(() => {});
});
page.on('pageerror', (e) => pageErrors.push(e.message));
page.on('console', (m) => {
  if (/Content Security Policy|Refused to/i.test(m.text())) cspConsole.push(m.text());
});
// Injected by the debugger, so the page's CSP does not apply to it.
await page.addInitScript(() => {
  window.__csp = [];
  document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample || ''}`));
});

async function shot(name) {
  await page.screenshot({path: path.join(SHOTS_DIR, name)});
}

async function go(hash, selector) {
  await page.goto(CONSOLE_URL + hash);
  if (selector) await page.waitForSelector(selector, {state: 'attached'});
}

async function text(selector) {
  return ((await page.textContent(selector)) || '').trim();
}

/** Nothing ran that should not have: no XSS, no native dialog, no page error, no CSP violation. */
async function assertClean(where) {
  const seen = await page.evaluate(() => ({xss: window.__xss, csp: window.__csp || [], injected: document.querySelectorAll('#view script, #view img, #view iframe').length}));
  check(seen.xss === undefined, `${where}: window.__xss was set: a payload ran`);
  check(seen.injected === 0, `${where}: ${seen.injected} script/img/iframe element(s) in the page's content`);
  check(dialogs.length === 0, `${where}: native dialogs opened: ${dialogs.join(' | ')}`);
  check(pageErrors.length === 0, `${where}: uncaught page errors: ${pageErrors.join(' | ')}`);
  check(seen.csp.length === 0 && cspConsole.length === 0, `${where}: CSP violations: ${[...seen.csp, ...cspConsole].join(' | ')}`);
}

/** Clicks `selector`, then OK in the console's confirmation dialog; returns its message. */
async function confirmVia(selector, input) {
  await page.click(selector);
  await page.waitForSelector('#confirm[open]');
  const message = await text('#confirm-message');
  if (input !== undefined) {
    check(await page.isVisible('#confirm-input'), `the dialog after ${selector} has no text field`);
    await page.fill('#confirm-input', input);
  }
  await page.click('#confirm-ok');
  await page.waitForSelector('#confirm:not([open])', {state: 'attached'});
  return message;
}

async function step(name, fn) {
  current = name;
  const started = Date.now();
  await fn();
  passed.push(name);
  console.log(`ok   ${name} (${Date.now() - started} ms)`);
}

// ---------------------------------------------------------------------------------------------
// the steps

async function run() {
  await step('login: a wrong token is refused, the right one signs in', async () => {
    await go('', '#token');
    await page.waitForSelector('#login:not([hidden])');
    await page.fill('#token', 'wrong-token-wrong-token');
    await page.click('#login-submit');
    await page.waitForSelector('#login-message:not([hidden])');
    check(/401|refused/i.test(await text('#login-message')), `login message: ${await text('#login-message')}`);
    check((await page.evaluate(() => sessionStorage.getItem('hookyard.token'))) === null, 'a refused token was stored');
    await shot('login.png');
    await page.fill('#token', ADMIN_TOKEN);
    await page.click('#login-submit');
    await page.waitForSelector('[data-page="overview"]');
    const stored = await page.evaluate(() => ({s: sessionStorage.getItem('hookyard.token'), l: localStorage.length, c: document.cookie}));
    check(stored.s === ADMIN_TOKEN, 'the token is not in sessionStorage under hookyard.token');
    check(stored.l === 0 && stored.c === '', `the token leaked into localStorage (${stored.l} keys) or cookies (${stored.c})`);
    const who = await adminApi('/api/v1/whoami').catch(() => null);
    const shown = await text('#whoami');
    check(shown.length > 0, 'no signed-in actor shown');
    if (who) check(shown.includes(who.actor), `whoami shows ${shown}, the API says ${who.actor}`);
  });

  await step('overview: rates, success rate, dead letters, config version', async () => {
    const [status, dests] = await Promise.all([adminApi('/api/v1/status'), adminApi('/api/v1/destinations')]);
    // the activity series is sampled every 5 s: wait for the attempts to be in it, then redraw
    const overview = await until('a success rate in /api/v1/overview', async () => {
      const o = await adminApi('/api/v1/overview');
      return o.success_rate !== null && o;
    }, 20000);
    check(overview.accepted.length === overview.delivered.length && overview.accepted.length > 0, `series: ${JSON.stringify(overview)}`);
    await go('#/events', '#filters');
    await go('#/overview', '[data-page="overview"]');
    await until('the events rate as a number', async () => /^\d/.test(await text('#ov-events-rate')));
    check(/^\d/.test(await text('#ov-deliveries-rate')), `deliveries rate: ${await text('#ov-deliveries-rate')}`);
    check(/^\d+(\.\d)?%$/.test(await text('#ov-success-rate')), `success rate: ${await text('#ov-success-rate')}`);
    const dead = dests.items.reduce((a, d) => a + d.dead, 0);
    check((await text('#ov-dead')) === String(dead), `dead letters: page ${await text('#ov-dead')}, API ${dead}`);
    check((await text('#ov-config-version')) === status.version, `config version: ${await text('#ov-config-version')} vs ${status.version}`);
    check((await page.locator('svg.chart polyline').count()) === 3, 'the chart has not 3 series');
    check((await page.locator('#ov-destinations tr[data-destination]').count()) === dests.items.length, 'not every destination in the overview');
    await shot('overview.png');
  });

  await step('events: filter by source through the form (kept in the address)', async () => {
    await go('#/events', '#filters');
    await page.fill('#f-source', 'shop');
    await page.click('#filter-apply');
    await until('source=shop in the address', async () => (await page.evaluate(() => location.hash)).includes('source=shop'));
    const ids = await until(`the ${SHOP_EVENT_IDS.length} shop events`, async () => {
      const rows = await page.$$eval('#events-body tr[data-event-id]', (trs) => trs.map((tr) => [tr.dataset.eventId, tr.dataset.source]));
      return rows.length === SHOP_EVENT_IDS.length && rows;
    });
    check(ids.every(([, s]) => s === 'shop'), `a row of another source: ${JSON.stringify(ids)}`);
    check(JSON.stringify(ids.map(([i]) => i).sort()) === JSON.stringify([...SHOP_EVENT_IDS].sort()), `rows ${JSON.stringify(ids)} vs ${SHOP_EVENT_IDS}`);
  });

  await step('events: filter by destination and delivery status', async () => {
    await page.fill('#f-source', '');
    await page.fill('#f-destination', DEAD_DESTINATION);
    await page.selectOption('#f-status', 'dead');
    await page.click('#filter-apply');
    await until('status=dead in the address', async () => (await page.evaluate(() => location.hash)).includes('status=dead'));
    const rows = await until(`${DEAD_EVENT_IDS.length} dead rows`, async () => {
      const r = await page.$$eval('#events-body tr[data-event-id]', (trs) => trs.map((tr) => ({id: tr.dataset.eventId, dead: tr.querySelectorAll('.badge[data-status="dead"]').length})));
      return r.length === DEAD_EVENT_IDS.length && r;
    });
    check(rows.every((r) => r.dead > 0 && DEAD_EVENT_IDS.includes(r.id)), `rows: ${JSON.stringify(rows)}`);
    // the shared address opens the same view
    const hash = await page.evaluate(() => location.hash);
    await go('#/overview', '[data-page="overview"]');
    await go(hash, '#events-body tr[data-event-id]');
    check((await page.inputValue('#f-destination')) === DEAD_DESTINATION, 'the filter form lost its destination after a reload');
  });

  await step('event detail: summary, headers, body, matched and unmatched routes with why', async () => {
    await go(`#/events/${EVENT_ID}`, '[data-page="event"]');
    check((await text('#event-id')) === EVENT_ID, `event id shown: ${await text('#event-id')}`);
    check((await page.locator('#headers-table tbody tr').count()) > 0, 'no headers shown');
    check((await text('#event-body')).includes('"case"'), `body: ${await text('#event-body')}`);
    await page.waitForSelector(`#routing li[data-route="${ROUTE_MATCHED}"][data-matched="true"]`);
    const unmatched = `#routing li[data-route="${ROUTE_UNMATCHED}"][data-matched="false"]`;
    await page.waitForSelector(unmatched);
    const why = await text(`${unmatched} .why`);
    check(/X-Kind/i.test(why), `why ${ROUTE_UNMATCHED} did not match: ${why}`);
    check(/current config/i.test(await text('#routing')), 'the routing section does not say it uses the current config');
    await shot('event.png');
  });

  await step('event detail: replay a delivery through the dialog; the new attempt shows', async () => {
    const card = '#deliveries .delivery[data-delivery-id]';
    const before = await page.locator(`${card} [data-test="attempts"] tbody tr[data-attempt]`).count();
    const message = await confirmVia(`${card} [data-test="replay-delivery"]`);
    check(/again/i.test(message), `confirmation message: ${message}`);
    await page.waitForSelector('#notice:not([hidden])');
    check(/Replayed/i.test(await text('#notice-text')), `notice: ${await text('#notice-text')}`);
    await until('a second attempt in the API', async () => {
      const ev = await adminApi(`/api/v1/events/${EVENT_ID}`);
      return ev.deliveries[0].attempt_log.length > before && ev.deliveries[0].status === 'delivered';
    });
    await until('the new attempt on the page', async () => {
      const n = await page.locator(`${card} [data-test="attempts"] tbody tr[data-attempt]`).count();
      if (n <= before) await go(`#/events/${EVENT_ID}?r=${Date.now()}`, '[data-page="event"]');
      return n > before;
    });
  });

  await step('destinations: pause with a reason, see it, resume', async () => {
    const reason = 'receiver maintenance (console test)';
    await go('#/destinations', '#destinations-table');
    const row = `#destinations-table tr[data-destination="${PAUSE_DESTINATION}"]`;
    await confirmVia(`${row} [data-test="pause"]`, reason);
    await page.waitForSelector(`${row}[data-paused="true"]`);
    check((await text(`${row} [data-test="pause-reason"]`)) === reason, `pause reason shown: ${await text(`${row} [data-test="pause-reason"]`)}`);
    const d = (await adminApi('/api/v1/destinations')).items.find((x) => x.name === PAUSE_DESTINATION);
    check(d.paused && d.pause_reason === reason, `the API says ${JSON.stringify(d)}`);
    await shot('destinations.png');
    await confirmVia(`${row} [data-test="resume"]`);
    await page.waitForSelector(`${row}[data-paused="false"]`);
    check(!(await adminApi('/api/v1/destinations')).items.find((x) => x.name === PAUSE_DESTINATION).paused, 'still paused after resume');
  });

  await step('destinations: bulk replay of dead letters (dry run count in the dialog)', async () => {
    const n = DEAD_EVENT_IDS.length;
    await page.selectOption('#bulk-destination', DEAD_DESTINATION);
    await page.fill('#bulk-since', '1d');
    const message = await confirmVia('#bulk-submit');
    check(message.includes(`${n} dead letter${n === 1 ? '' : 's'}`), `the dialog says "${message}", expected ${n} dead letters`);
    await page.waitForSelector('#notice:not([hidden])');
    check(new RegExp(`Replayed ${n}`).test(await text('#notice-text')), `notice: ${await text('#notice-text')}`);
    await until(`${DEAD_DESTINATION}'s dead letters delivered`, async () => {
      const d = (await adminApi('/api/v1/destinations')).items.find((x) => x.name === DEAD_DESTINATION);
      return d.dead === 0 && d.pending === 0;
    });
    await until('no dead letters on the page', async () => {
      const t = await text(`#destinations-table tr[data-destination="${DEAD_DESTINATION}"] [data-test="dead"]`).catch(() => '');
      if (t !== '0') await go(`#/destinations?r=${Date.now()}`, '#destinations-table');
      return t === '0';
    });
  });

  await step('XSS: hostile bodies and headers are shown as text, never run', async () => {
    check(XSS_EVENT_IDS.length > 0, 'no XSS_EVENT_IDS given');
    for (const id of XSS_EVENT_IDS) {
      await go(`#/events/${id}`, '[data-page="event"]');
      await page.waitForSelector('#routing li[data-route]');
      const shown = (await text('#event-body')) + (await text('#headers-table')) + (await text('#routing'));
      check(XSS_MARKERS.some((m) => shown.includes(m)), `event ${id}: the payload is not shown as text`);
      await assertClean(`event ${id}`);
      if (id === XSS_EVENT_IDS[XSS_EVENT_IDS.length - 1]) await shot('xss.png');
    }
    await go('#/events', '#events-body tr[data-event-id]');
    await go(`#/events?q=${encodeURIComponent(XSS_MARKERS[1])}`, '#filters');
    await sleep(300);
    await assertClean('the event list');
  });

  await step('routes: conditions as written, and trying an event', async () => {
    const routes = await adminApi('/api/v1/routes');
    await go('#/routes', '[data-page="routes"]');
    check((await page.locator('.route-card[data-route]').count()) === routes.routes.length, 'not every route shown');
    check((await text(`.route-card[data-route="${ROUTE_MATCHED}"] [data-test="route-yaml"]`)).includes('X-Kind'), 'the route as written is not shown');
    await page.selectOption('#try-source', 'app');
    await page.fill('#try-headers', `Content-Type: application/json\nX-Kind: order\nX-Note: ${XSS_MARKERS[1]}`);
    await page.fill('#try-body', `{"case": "try", "html": "${XSS_MARKERS[0].replace(/"/g, '\\"')}"}`);
    await page.click('#try-run');
    await page.waitForSelector(`#try-result li[data-route="${ROUTE_MATCHED}"][data-matched="true"]`);
    const why = await text(`#try-result li[data-route="${ROUTE_UNMATCHED}"][data-matched="false"] .why`);
    check(/X-Kind/i.test(why), `why not: ${why}`);
    await page.waitForSelector('#try-result [data-test="planned"]');
    await assertClean('the routes page');
    await page.screenshot({path: path.join(SHOTS_DIR, 'routes.png'), fullPage: false});
  });

  await step('live tail: a new event appears; paused it waits; resumed it shows', async () => {
    await go('#/events', '#tail-toggle');
    await page.waitForSelector('#tail-status[data-status="live"]');
    check((await text('#tail-toggle')) === 'Pause', `toggle says ${await text('#tail-toggle')}`);
    const first = await post('/hooks/app', {'Content-Type': 'application/json', 'X-Kind': 'order'}, '{"case":"tail-1"}');
    await page.waitForSelector(`#events-body tr[data-event-id="${first}"]`);
    await page.waitForSelector(`#events-body tr[data-event-id="${first}"] .badge[data-status="delivered"]`);
    await page.click('#tail-toggle');
    check((await text('#tail-toggle')) === 'Resume', `toggle says ${await text('#tail-toggle')}`);
    const second = await post('/hooks/app', {'Content-Type': 'application/json', 'X-Kind': 'order'}, '{"case":"tail-2"}');
    await until('the paused count', async () => /1 new event/.test(await text('#tail-pending')));
    check((await page.locator(`#events-body tr[data-event-id="${second}"]`).count()) === 0, 'a paused tail showed the event');
    await page.click('#tail-toggle');
    await page.waitForSelector(`#events-body tr[data-event-id="${second}"]`);
    check(await page.isHidden('#tail-pending'), 'the paused count stays after resuming');
    await shot('events.png');
  });

  await step('log out, and a token that stops working returns to the login', async () => {
    await page.click('#logout');
    await page.waitForSelector('#login:not([hidden])');
    check((await page.evaluate(() => sessionStorage.getItem('hookyard.token'))) === null, 'log out left the token');
    await page.evaluate(() => sessionStorage.setItem('hookyard.token', 'a-token-that-was-revoked-0000'));
    await page.reload();
    await page.waitForSelector('#login-message:not([hidden])');
    check(/401/.test(await text('#login-message')), `after a refused saved token: ${await text('#login-message')}`);
    await page.fill('#token', ADMIN_TOKEN);
    await page.click('#login-submit');
    await page.waitForSelector('#shell:not([hidden]) [data-page="events"]');
    await assertClean('the whole session');
  });
}

let failed = false;
try {
  await run();
} catch (e) {
  failed = true;
  console.error(`FAIL ${current}: ${e instanceof Failure ? e.message : e.stack || e}`);
  await page.screenshot({path: path.join(SHOTS_DIR, 'failure.png'), fullPage: true}).catch(() => {});
} finally {
  await browser.close().catch(() => {});
  clearTimeout(hard);
}
console.log(`${passed.length} passed, ${failed ? 1 : 0} failed`);
process.exit(failed ? 1 : 0);
