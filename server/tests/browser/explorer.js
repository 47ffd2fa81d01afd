// Drives udm-server's explorer in Debian's headless Chromium: node explorer.js '<spec JSON>'
// spec: {"url", "token", "bad_token", "query", "subscription", "after", "screenshot", "timeout_ms"}
// Prints one JSON line per step ({"step": ...}); before the subscription's first event it prints
// {"step": "subscribed"} and waits (up to timeout_ms) for an event to appear in the page's log.
// Exits non-zero when something fails (with {"step": "failed", "error"}).
import puppeteer from 'puppeteer-core';

const spec = JSON.parse(process.argv[2]);
const timeout = spec.timeout_ms ?? 20000;
const out = (v) => process.stdout.write(JSON.stringify(v) + '\n');

const browser = await puppeteer.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  timeout,
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  await page.setViewport({ width: 1280, height: 1000 });
  // anything the page complains about (a script error, a Content-Security-Policy violation)
  // (failed requests, such as the 401 below, are logged by Chromium too: not problems)
  const problems = [];
  page.on('pageerror', (e) => problems.push('pageerror: ' + e.message));
  page.on('console', (m) => {
    if (/Content.Security.Policy|Uncaught/i.test(m.text())) problems.push('console: ' + m.text());
  });
  await page.evaluateOnNewDocument(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error('Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI);
    });
  });
  // what the page fetches: only its own origin
  const requested = [];
  page.on('request', (r) => requested.push(r.url()));

  const nav = await page.goto(spec.url, { waitUntil: 'load' });
  out({
    step: 'page',
    status: nav.status(),
    content_type: nav.headers()['content-type'],
    csp: nav.headers()['content-security-policy'],
    title: await page.title(),
  });

  const setValue = async (sel, text) => {
    await page.$eval(sel, (el) => { el.value = ''; });
    await page.type(sel, text);
  };
  // clicks a button of the result pane and waits until the page shows the answer
  const runAndRead = async (button) => {
    const before = await page.$eval('#result', (el) => Number(el.dataset.seq));
    await page.click(button);
    await page.waitForFunction((n) => Number(document.getElementById('result').dataset.seq) > n, {}, before);
    return page.evaluate(() => ({
      status: document.getElementById('status').textContent,
      result: document.getElementById('result').textContent,
    }));
  };

  // a bad token: the server's 401, shown in the page
  await setValue('#token', spec.bad_token);
  await setValue('#query', spec.query);
  out({ step: 'bad_token', ...(await runAndRead('#run')) });

  // the real token: the records
  await setValue('#token', spec.token);
  out({ step: 'query', ...(await runAndRead('#run')) });

  // the token is kept for the tab (sessionStorage): a reload shows it again
  await page.reload({ waitUntil: 'load' });
  out({ step: 'reload', token_kept: (await page.$eval('#token', (el) => el.value)) === spec.token });

  // the schema, by introspection
  out({ step: 'schema', ...(await runAndRead('#schema')) });

  // a subscription: the test inserts a record once the page has subscribed
  await setValue('#subscription', spec.subscription);
  if (spec.after !== undefined) await setValue('#after', String(spec.after));
  await page.click('#subscribe');
  await page.waitForFunction(() => document.getElementById('sub-state').textContent === 'subscribed');
  out({ step: 'subscribed' });
  await page.waitForFunction(() => document.querySelectorAll('#log li').length > 0, { timeout });
  const log = await page.$$eval('#log li', (lis) => lis.map((li) => ({ kind: li.dataset.kind, text: li.textContent })));
  const state = await page.$eval('#sub-state', (el) => el.textContent);
  out({ step: 'log', state, entries: log });

  // the screenshot with the query's result and the subscription's log, then Stop
  await setValue('#query', spec.query);
  const again = await runAndRead('#run');
  out({ step: 'query_again', ...again });
  await page.screenshot({ path: spec.screenshot, fullPage: true });
  await page.click('#stop');
  out({
    step: 'stopped',
    state: await page.$eval('#sub-state', (el) => el.textContent),
    stop_disabled: await page.$eval('#stop', (el) => el.disabled),
  });

  const origin = new URL(spec.url).origin;
  out({ step: 'done', problems, foreign_requests: requested.filter((u) => !u.startsWith(origin)) });
  await browser.close();
} catch (e) {
  out({ step: 'failed', error: String(e && e.stack || e) });
  await browser.close();
  process.exit(1);
}
