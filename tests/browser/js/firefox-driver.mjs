// Drives one headless Debian firefox-esr over WebDriver BiDi (puppeteer-core), for
// the Python browser tests (tests/browser/firefox.py). One process, one browser, one
// page. Requests come as JSON lines on stdin, answers go as JSON lines on stdout:
//
//   {"id": 1, "op": "goto", "url": "http://127.0.0.1:8080/?room=r"}
//   {"id": 2, "op": "evaluate", "source": "(x) => x + 1", "arg": 41}
//   {"id": 3, "op": "close"}
//
//   {"id": 2, "ok": true, "value": 42}      or  {"id": 2, "ok": false, "error": "..."}
//   {"event": "console", "text": "log: ..."} (the page's console and errors)
//
// `source` is a JavaScript expression: a function is called with `arg` (and awaited),
// anything else is returned as it is, as Playwright's `page.evaluate` does. Values
// travel as JSON. Preferences are those of ../shared/TESTING.md: fake camera and
// microphone without a prompt, ICE on loopback with real host addresses.
import readline from 'node:readline';
import puppeteer from 'puppeteer-core';

const FIREFOX = process.env.SFU_TEST_FIREFOX ?? '/usr/bin/firefox-esr';

const PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'media.peerconnection.ice.loopback': true,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  'media.peerconnection.ice.force_interface': 'lo',
  'media.autoplay.default': 0,
  'media.autoplay.block-webaudio': false,
  // No update, telemetry or other background traffic (the network reaches no one).
  'app.update.enabled': false,
  'datareporting.policy.dataSubmissionEnabled': false,
  'toolkit.telemetry.enabled': false,
  'network.captive-portal-service.enabled': false,
  'network.connectivity-service.enabled': false,
};

function write(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: FIREFOX,
  headless: true,
  extraPrefsFirefox: PREFS,
});
const page = (await browser.pages())[0] ?? (await browser.newPage());
page.on('console', (message) => write({ event: 'console', text: `${message.type()}: ${message.text()}` }));
page.on('pageerror', (error) => write({ event: 'console', text: `pageerror: ${error.message ?? error}` }));
// puppeteer starts Firefox in a process group of its own: the caller ends it by this id.
write({ event: 'ready', browserPid: browser.process()?.pid ?? null });

async function handle(request) {
  switch (request.op) {
    case 'goto':
      await page.goto(request.url, { waitUntil: 'load' });
      return null;
    case 'evaluate':
      return page.evaluate(async (source, arg) => {
        const value = (0, eval)(`(${source})`);
        return typeof value === 'function' ? await value(arg) : value;
      }, request.source, request.arg ?? null);
    case 'close':
      await browser.close();
      return null;
    default:
      throw new Error(`unknown op ${request.op}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  let request;
  try {
    request = JSON.parse(line);
  } catch {
    continue;
  }
  try {
    const value = await handle(request);
    write({ id: request.id, ok: true, value: value === undefined ? null : value });
  } catch (error) {
    write({ id: request.id, ok: false, error: String(error?.message ?? error) });
  }
  if (request.op === 'close') break;
}
await browser.close().catch(() => {});
process.exit(0);
