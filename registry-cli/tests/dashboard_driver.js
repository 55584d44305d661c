// Drives the dashboard in headless Debian Chromium with playwright-core, for tests/dashboard.rs.
//
// Usage: node dashboard_driver.js URL ARTEFACT_DIR   (REGISTRY_PLAYWRIGHT_DIR: node_modules holding
// playwright-core). Reads one JSON command per line on stdin and answers each on stdout with a JSON
// line `{"id": N, "ok": true, ...}` (or `"ok": false, "error": ...`, with a screenshot of the page
// as it was). Commands that wait for the page (`expect`, `banner`) first answer `{"id": N,
// "started": true}` once they watch the page, so that the test changes the registry only then.
// Every answer says how many times the page has navigated: 1 means it was never reloaded.
'use strict';

const path = require('path');
const readline = require('readline');

const [url, artefacts] = process.argv.slice(2);
const modules = process.env.REGISTRY_PLAYWRIGHT_DIR;
const { chromium } = require(path.join(modules, 'playwright-core'));

let page;
let browser;
let navigations = 0;
const problems = [];

function say(v) {
  process.stdout.write(JSON.stringify({ ...v, navigations, problems }) + '\n');
}

async function shot(name) {
  const file = path.join(artefacts, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

const card = (service) => `section.service[data-service="${service}"]`;
const row = (service, id) => `${card(service)} tr.instance[data-instance="${id}"]`;

const commands = {
  async open(c) {
    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      timeout: c.timeout_ms,
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations += 1; });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
    const response = await page.goto(url, { timeout: c.timeout_ms, waitUntil: 'load' });
    const headers = response.headers();
    await page.waitForSelector('#conn[data-state="live"]', { timeout: c.timeout_ms });
    return { status: response.status(), headers };
  },

  /** Waits until `service` shows instance `instance` (present) or no longer does. */
  async expect(c, started) {
    const wait = page.waitForSelector(row(c.service, c.instance),
      { state: c.present ? 'attached' : 'detached', timeout: c.timeout_ms });
    started();
    await wait;
    const seen_ms = Date.now();
    const file = c.shot ? await shot(c.shot) : null;
    return { seen_ms, shot: file };
  },

  /** The ids shown for each of `services`, once each shows at least `min[service]` instances. */
  async listed(c) {
    const out = {};
    for (const [service, n] of Object.entries(c.min)) {
      await page.waitForFunction(([sel, n]) => document.querySelectorAll(sel).length >= n,
        [`${card(service)} tr.instance`, n], { timeout: c.timeout_ms });
      // The ring is drawn (it comes with the shares in the table).
      await page.waitForSelector(`${card(service)} svg path[data-member]`, { state: 'attached', timeout: c.timeout_ms });
      out[service] = await page.$$eval(`${card(service)} tr.instance`, (rows) => rows.map((r) => ({
        id: r.dataset.instance, state: r.dataset.state, share: r.querySelector('.share').textContent,
        source: r.querySelector('.source').textContent, text: r.textContent })));
    }
    return { services: out, shot: c.shot ? await shot(c.shot) : null };
  },

  /** Hovers an instance's row: the detail under the ring must show its share and metadata. */
  async hover(c) {
    await page.hover(row(c.service, c.instance));
    const sel = `${card(c.service)} .detail[data-detail="${c.instance}"]`;
    await page.waitForSelector(sel, { timeout: c.timeout_ms });
    const detail = await page.textContent(sel);
    // An arc of the ring is focused too: the others are dimmed.
    const dimmed = await page.$$eval(`${card(c.service)} svg path.dim`, (p) => p.length);
    const own = await page.$$eval(`${card(c.service)} svg path[data-member="${c.instance}"]:not(.dim)`, (p) => p.length);
    const file = c.shot ? await shot(c.shot) : null;
    await page.mouse.move(0, 0);
    return { detail, dimmed, own, shot: file };
  },

  /** Asks the key box for `key`'s `n` owners in `service`. */
  async find(c) {
    await page.selectOption('#key-service', c.service);
    await page.fill('#key-input', c.key);
    await page.fill('#key-n', String(c.n));
    await page.click('#key-go');
    const sel = `#key-result[data-key="${c.key.replace(/["\\]/g, '\\$&')}"]`;
    await page.waitForSelector(sel, { timeout: c.timeout_ms });
    const owners = await page.$$eval('#key-result li[data-owner]', (li) => li.map((l) => l.dataset.owner));
    const text = await page.textContent('#key-result');
    // The key's mark on the service's ring.
    await page.waitForSelector(`${card(c.service)} svg line[data-key]`, { timeout: c.timeout_ms });
    return { owners, text, shot: c.shot ? await shot(c.shot) : null };
  },

  /** Waits until the stale banner is shown (`visible`) or gone. */
  async banner(c, started) {
    const wait = page.waitForSelector('#stale-banner', { state: c.visible ? 'visible' : 'hidden', timeout: c.timeout_ms });
    started();
    await wait;
    const seen_ms = Date.now();
    const text = await page.textContent('#stale-banner');
    return { seen_ms, text, shot: c.shot ? await shot(c.shot) : null };
  },

  async close() {
    await browser.close();
    return {};
  },
};

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const c = JSON.parse(line);
  try {
    const run = commands[c.cmd];
    if (!run) throw new Error(`unknown command ${c.cmd}`);
    const result = await run(c, () => say({ id: c.id, started: true }));
    say({ id: c.id, ok: true, ...result });
    if (c.cmd === 'close') process.exit(0);
  } catch (e) {
    let file = null;
    try { file = page ? await shot(`failed-${c.id}-${c.cmd}`) : null; } catch (_) { /* none */ }
    say({ id: c.id, ok: false, error: String(e && e.stack || e), shot: file });
  }
});
